// The frontends' shell: sign-in, hash routes and announcements for screen readers.
// Researchers get the Registration frontend (#/households, #/register,
// #/households/<id>) and the device status; administrators the device status (#/status).

import { api, describe, isAbort, onTokenRefused, session } from './api.js';
import { h } from './dom.js';
import * as households from './households.js';
import * as registration from './registration.js';
import * as signin from './signin.js';
import * as status from './status.js';

const ROUTES = [
  { pattern: /^\/households$/, page: households, roles: ['researcher'] },
  { pattern: /^\/register$/, page: registration, roles: ['researcher'] },
  { pattern: /^\/households\/([0-9a-fA-F-]{36})$/, page: registration, roles: ['researcher'] },
  { pattern: /^\/status$/, page: status, roles: ['researcher', 'admin'] },
];
const HOME = { researcher: '/households', admin: '/status' };

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const signOutButton = document.getElementById('sign-out');
const roleLabel = document.getElementById('role');
const announcer = document.getElementById('announcer');

let unmount = null;
let signInNotice = '';
/** `{role, report_interval_seconds, silent_after_seconds}` of the signed-in token. */
let who = null;

/** Reads a message to screen-reader users without moving the focus. */
function announce(message) {
  announcer.textContent = '';
  // A fresh text node after a tick is announced even when the message repeats.
  setTimeout(() => {
    announcer.textContent = message;
  }, 50);
}

function currentPath() {
  const hash = window.location.hash;
  return hash.startsWith('#/') ? hash.slice(1) : '';
}

function go(path) {
  window.location.hash = `#${path}`;
}

function clear() {
  if (unmount) {
    unmount();
    unmount = null;
  }
  main.replaceChildren();
}

async function render() {
  clear();
  if (!session.token()) {
    who = null;
    nav.hidden = true;
    signOutButton.hidden = true;
    roleLabel.textContent = '';
    document.title = 'Sign in · EnergieBroker survey';
    unmount = signin.mount(main, {
      notice: signInNotice,
      onSignedIn(answer) {
        signInNotice = '';
        who = answer;
        const target = matchRoute(currentPath());
        if (!target) go(HOME[who.role]);
        else render();
      },
    });
    main.querySelector('h1')?.focus();
    return;
  }
  if (!who) {
    main.append(h('p', { class: 'loading' }, 'Loading…'));
    try {
      who = await api.session(session.token());
    } catch (failure) {
      if (isAbort(failure)) return;
      // A refused token signs out through onTokenRefused; anything else is shown.
      if (session.token()) {
        main.replaceChildren(h('p', { class: 'error', role: 'alert' }, `Cannot reach the Data API: ${describe(failure)}`));
      }
      return;
    }
    clear();
  }
  const target = matchRoute(currentPath());
  if (!target || !target.route.roles.includes(who.role)) {
    window.location.replace(`#${HOME[who.role]}`);
    return;
  }
  nav.hidden = false;
  signOutButton.hidden = false;
  roleLabel.textContent = who.role === 'researcher' ? 'Researcher' : 'Administrator';
  for (const item of nav.querySelectorAll('li[data-role]')) {
    item.hidden = item.dataset.role !== who.role;
  }
  const section = '/' + currentPath().split('/')[1];
  for (const link of nav.querySelectorAll('a[data-route]')) {
    if (link.dataset.route === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const { page, params } = target;
  const title = typeof page.title === 'function' ? page.title(params) : page.title;
  document.title = `${title} · EnergieBroker survey`;
  unmount = page.mount(main, { announce, go, who, params });
  main.querySelector('h1')?.focus();
}

function matchRoute(path) {
  for (const route of ROUTES) {
    const found = route.pattern.exec(path);
    if (found) return { route, page: route.page, params: found.slice(1) };
  }
  return null;
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
  signOut('The Data API no longer accepts the token you signed in with. Sign in again.');
});

window.addEventListener('hashchange', render);
window.addEventListener('unhandledrejection', (event) => {
  // Requests aborted on leaving a page are expected; anything else is a bug worth seeing.
  if (isAbort(event.reason)) event.preventDefault();
});

render();
