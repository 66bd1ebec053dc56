// Services: every service with its state, error reason and images (node, container
// state), refreshed every few seconds in place, so focus and scroll position survive.

import { api, describe, isAbort } from './api.js';
import { every, fill, h, pageHeading, showMessage } from './dom.js';
import { ago, dateTime, shortId, stateBadge } from './format.js';
import { accessPanel } from './service-access.js';

export const title = 'Services';

const REFRESH_MS = 3000;
const HIDE_TERMINATED_KEY = 'motey.hide-terminated';

export function mount(main, { announce, confirm }) {
  const list = h('ul', { class: 'cards', id: 'service-list', 'aria-label': 'Services' });
  const empty = h(
    'p',
    { class: 'empty', id: 'no-services', hidden: true },
    'No services. ',
    h('a', { href: '#/deploy' }, 'Deploy a blueprint'),
    '.',
  );
  const error = h('p', { class: 'error', role: 'alert', id: 'services-error', hidden: true });
  const updated = h('span', { class: 'updated', id: 'services-updated' });
  const hideTerminated = h('input', {
    type: 'checkbox',
    id: 'hide-terminated',
    checked: sessionStorage.getItem(HIDE_TERMINATED_KEY) === 'true',
  });
  const cards = new Map();
  let latest = [];
  // Services this node runs for a peer can only be terminated through their owner.
  let thisNode = null;

  const render = () => {
    const shown = latest
      .filter((service) => !(hideTerminated.checked && service.state === 'TERMINATED'))
      .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    const wanted = new Set(shown.map((service) => service.id));
    for (const [id, card] of cards) {
      if (!wanted.has(id)) {
        card.element.remove();
        cards.delete(id);
      }
    }
    shown.forEach((service, index) => {
      let card = cards.get(service.id);
      if (!card) {
        card = serviceCard(service, terminate, () => thisNode);
        cards.set(service.id, card);
      }
      card.update(service);
      // Only cards out of place move; moving a focused element would drop its focus.
      if (list.children[index] !== card.element) {
        list.insertBefore(card.element, list.children[index] || null);
      }
    });
    empty.hidden = shown.length > 0;
  };

  const poll = every(REFRESH_MS, async (signal) => {
    try {
      if (thisNode === null) {
        const nodes = await api.nodes(signal);
        thisNode = nodes.find((node) => node.this_node)?.id ?? null;
      }
      latest = await api.services(signal);
      showMessage(error, '');
      updated.replaceChildren('Updated ', dateTime(new Date()));
      render();
    } catch (failure) {
      if (!isAbort(failure)) showMessage(error, `Cannot load the services: ${describe(failure)}`);
    }
  });

  async function terminate(service) {
    const confirmed = await confirm({
      title: `Terminate ${service.name}?`,
      text: 'Its containers are stopped and removed on every node that runs them. This cannot be undone.',
      action: 'Terminate',
    });
    if (!confirmed) return;
    try {
      await api.terminate(service.id);
      announce(`Terminating ${service.name}`);
      poll.now();
    } catch (failure) {
      showMessage(error, `Cannot terminate ${service.name}: ${describe(failure)}`);
    }
  }

  hideTerminated.addEventListener('change', () => {
    sessionStorage.setItem(HIDE_TERMINATED_KEY, String(hideTerminated.checked));
    render();
  });

  main.append(
    h(
      'section',
      { class: 'page' },
      h(
        'div',
        { class: 'page-head' },
        pageHeading('Services'),
        h('a', { class: 'button', href: '#/deploy' }, 'Deploy a blueprint'),
      ),
      h(
        'div',
        { class: 'toolbar' },
        h('label', { class: 'check' }, hideTerminated, ' Hide terminated services'),
        updated,
      ),
      error,
      empty,
      list,
    ),
  );
  return () => poll.stop();
}

/** One service's card; `update` changes only what the new data changes. */
function serviceCard(service, onTerminate, thisNode) {
  const titleId = `service-${service.id}-name`;
  const state = h('span', { class: 'state-slot' });
  const reason = h('p', { class: 'reason', hidden: true });
  const changed = h('dd', {});
  const images = h('tbody', {});
  const terminateButton = h(
    'button',
    { type: 'button', class: 'danger', dataset: { action: 'terminate' } },
    'Terminate',
  );
  const foreign = h('p', { class: 'hint', hidden: true });
  // The latest update: under way, completed or rolled back (the reason says why).
  const progress = h('p', { class: 'update-progress', hidden: true, dataset: { phase: '' } });
  const version = h('dd', {});
  let current = service;
  const access = accessPanel(() => current);
  terminateButton.addEventListener('click', () => onTerminate(current));
  const element = h(
    'li',
    { class: 'card service', dataset: { serviceId: service.id }, 'aria-labelledby': titleId },
    h('div', { class: 'card-head' }, h('h2', { id: titleId }, service.name), state),
    reason,
    progress,
    h(
      'dl',
      { class: 'meta' },
      h('div', {}, h('dt', {}, 'Id'), h('dd', {}, h('code', {}, service.id))),
      h('div', {}, h('dt', {}, 'Version'), version),
      h('div', {}, h('dt', {}, 'Owner'), h('dd', {}, service.owner)),
      h('div', {}, h('dt', {}, 'Created'), h('dd', {}, dateTime(service.created_at))),
      h('div', {}, h('dt', {}, 'Changed'), changed),
    ),
    h(
      'table',
      { class: 'images' },
      h('caption', { class: 'visually-hidden' }, `Images of ${service.name}`),
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          h('th', { scope: 'col' }, 'Image'),
          h('th', { scope: 'col' }, 'Node'),
          h('th', { scope: 'col' }, 'Container'),
        ),
      ),
      images,
    ),
    h('div', { class: 'actions' }, ...access.buttons, terminateButton, foreign),
    access.panel,
  );
  const [updateButton] = access.buttons;
  let rendered = '';
  return {
    element,
    update(next) {
      current = next;
      const me = thisNode();
      const snapshot = JSON.stringify([
        next.state,
        next.reason,
        next.images,
        next.desired,
        next.update,
        next.version,
        me,
      ]);
      fill(changed, ago(next.updated_at));
      if (snapshot === rendered) return;
      rendered = snapshot;
      element.dataset.state = next.state;
      fill(state, stateBadge(next.state));
      reason.hidden = !next.reason;
      reason.textContent = next.reason || '';
      fill(images, next.images.map(imageRow));
      fill(version, String(next.version ?? 1));
      const phase = next.update?.phase || '';
      progress.dataset.phase = phase;
      progress.hidden =
        next.desired === 'TERMINATED' || !['UPDATING', 'ROLLING_BACK'].includes(phase);
      progress.textContent = progress.hidden ? '' : next.update.message;
      // A service being terminated cannot be terminated again; keep the button (and a
      // focus on it) but say so.
      const terminating = next.desired === 'TERMINATED';
      terminateButton.disabled = terminating;
      terminateButton.textContent = terminating ? 'Terminating…' : 'Terminate';
      const ownedHere = !me || next.owner === me;
      terminateButton.hidden = next.state === 'TERMINATED' || !ownedHere;
      foreign.hidden = ownedHere || next.state === 'TERMINATED';
      // Only the owner updates a service, and not while it is terminated.
      updateButton.hidden = terminating || next.state === 'TERMINATED' || !ownedHere;
      foreign.textContent = ownedHere ? '' : `Runs here for node ${next.owner}; terminate it there.`;
    },
  };
}

function imageRow(image) {
  return h(
    'tr',
    { dataset: { image: image.name } },
    h(
      'td',
      { dataset: { label: 'Image' } },
      h('strong', {}, image.name),
      h('br'),
      h('code', { class: 'reference' }, image.image),
      image.capabilities?.length
        ? h('span', { class: 'needs' }, ` needs ${image.capabilities.join(', ')}`)
        : null,
    ),
    h('td', { dataset: { label: 'Node' } }, image.node || h('em', {}, 'not placed')),
    h(
      'td',
      { dataset: { label: 'Container' } },
      stateBadge(image.state),
      image.container_id ? h('code', { class: 'container-id' }, ` ${shortId(image.container_id)}`) : null,
      image.reason ? h('span', { class: 'image-reason' }, image.reason) : null,
    ),
  );
}
