// The web client's shell: sign-in, hash routes (#/services, #/nodes, #/capabilities,
// #/deploy), the confirmation dialog and announcements for screen readers.

import { api, isAbort, onTokenRefused, session } from './api.js';
import * as capabilities from './capabilities.js';
import * as deploy from './deploy.js';
import * as nodes from './nodes.js';
import * as services from './services.js';
import * as signin from './signin.js';

const routes = {
  '/services': services,
  '/nodes': nodes,
  '/capabilities': capabilities,
  '/deploy': deploy,
};
const HOME = '/services';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const signOutButton = document.getElementById('sign-out');
const nodeName = document.getElementById('node-name');
const announcer = document.getElementById('announcer');
const dialog = document.getElementById('confirm');

let unmount = null;
let signInNotice = '';

/** Reads a message to screen-reader users without moving the focus. */
function announce(message) {
  announcer.textContent = '';
  // A fresh text node after a tick is announced even when the message repeats.
  setTimeout(() => {
    announcer.textContent = message;
  }, 50);
}

/**
 * Asks for confirmation in the native modal <dialog>, which keeps the focus inside it
 * and closes on Escape (as "cancel").
 */
function confirm({ title, text, action }) {
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = action;
  dialog.returnValue = 'cancel';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), {
      once: true,
    });
    dialog.showModal();
  });
}

function currentPath() {
  const hash = window.location.hash;
  return hash.startsWith('#/') ? hash.slice(1) : '';
}

async function showNodeName() {
  try {
    const list = await api.nodes();
    const me = list.find((node) => node.this_node);
    nodeName.textContent = me ? me.name || me.id : '';
  } catch (error) {
    if (!isAbort(error)) nodeName.textContent = '';
  }
}

function render() {
  if (unmount) {
    unmount();
    unmount = null;
  }
  if (dialog.open) dialog.close('cancel');
  main.replaceChildren();
  if (!session.token()) {
    nav.hidden = true;
    signOutButton.hidden = true;
    nodeName.textContent = '';
    document.title = 'Sign in · motey';
    unmount = signin.mount(main, {
      notice: signInNotice,
      onSignedIn() {
        signInNotice = '';
        showNodeName();
        if (!routes[currentPath()]) window.location.hash = `#${HOME}`;
        else render();
      },
    });
    main.querySelector('h1')?.focus();
    return;
  }
  const path = currentPath();
  const page = routes[path];
  if (!page) {
    window.location.replace(`#${HOME}`);
    return;
  }
  nav.hidden = false;
  signOutButton.hidden = false;
  for (const link of nav.querySelectorAll('a[data-route]')) {
    if (link.dataset.route === path) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${page.title} · motey`;
  unmount = page.mount(main, { announce, confirm });
  main.querySelector('h1')?.focus();
}

function signOut(notice = '') {
  session.signOut();
  signInNotice = notice;
  render();
}

signOutButton.addEventListener('click', () => {
  signOut();
  announce('Signed out');
});

document.getElementById('skip-link').addEventListener('click', (event) => {
  // The hash belongs to the router; move the focus instead of following the link.
  event.preventDefault();
  main.focus();
});

onTokenRefused(() => {
  signOut('The agent no longer accepts the token you signed in with. Sign in again.');
});

window.addEventListener('hashchange', render);
window.addEventListener('unhandledrejection', (event) => {
  // Polls aborted on leaving a page are expected; anything else is a bug worth seeing.
  if (isAbort(event.reason)) event.preventDefault();
});

if (session.token()) showNodeName();
render();
