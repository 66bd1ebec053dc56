// A service's update, history and logs, in a panel under its card on the Services page.
// Update sends a new blueprint version (pasted or uploaded) and the card then shows the
// rollout and, if the new version does not run, why it was rolled back. Logs need the
// admin token (device access); an admin signed in with the API token is asked for it.

import { api, describe, isAbort, session } from './api.js';
import { fill, h, showMessage } from './dom.js';
import { dateTime } from './format.js';

/** The panel and the buttons that open its views; `service()` gives the latest data. */
export function accessPanel(service) {
  const panel = h('div', { class: 'service-panel', hidden: true, dataset: { view: '' } });
  let closeView = () => {};

  const open = (view, render) => {
    closeView();
    closeView = () => {};
    if (panel.dataset.view === view && !panel.hidden) {
      panel.hidden = true;
      panel.dataset.view = '';
      fill(panel);
      return;
    }
    panel.dataset.view = view;
    panel.hidden = false;
    fill(panel);
    closeView = render(panel) || (() => {});
  };

  const button = (action, label, view) => {
    const element = h('button', { type: 'button', class: 'secondary', dataset: { action } }, label);
    element.addEventListener('click', () => open(action, view));
    return element;
  };
  const buttons = [
    button('update', 'Update', (into) => updateView(into, service)),
    button('history', 'History', (into) => historyView(into, service)),
    button('logs', 'Logs', (into) => logsView(into, service)),
  ];
  return { panel, buttons };
}

function updateView(into, service) {
  const current = service();
  const id = `update-${current.id}`;
  const text = h('textarea', {
    id: `${id}-blueprint`,
    class: 'update-blueprint',
    rows: 10,
    spellcheck: 'false',
    placeholder: `name: ${current.name}\nimages:\n  - name: …\n    image: …`,
  });
  const file = h('input', { type: 'file', id: `${id}-file`, accept: '.yaml,.yml,.json' });
  const errors = h('div', { class: 'error', role: 'alert', id: `${id}-errors`, hidden: true });
  const submit = h('button', { type: 'submit', id: `${id}-submit` }, 'Update');
  file.addEventListener('change', async () => {
    const chosen = file.files?.[0];
    if (chosen) text.value = await chosen.text();
  });
  const form = h(
    'form',
    { class: 'update-form' },
    h('h3', {}, `Update ${current.name} (version ${current.version ?? 1})`),
    h(
      'p',
      { class: 'hint' },
      'Paste or upload the new version of the blueprint. Images are replaced one at a time; ' +
        'a new version that does not keep running is rolled back automatically.',
    ),
    h('label', { for: text.id }, 'New blueprint (YAML)'),
    text,
    h('label', { for: file.id }, 'or upload a file '),
    file,
    errors,
    h('div', { class: 'actions' }, submit),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      await api.update(current.id, text.value);
      showMessage(errors, '');
      text.removeAttribute('aria-invalid');
      fill(into, h('p', { class: 'notice', id: `${id}-started` }, 'Update started; the card shows its progress.'));
    } catch (failure) {
      text.setAttribute('aria-invalid', 'true');
      showMessage(errors, describe(failure));
    } finally {
      submit.disabled = false;
    }
  });
  into.append(form);
  text.focus();
}

function historyView(into, service) {
  const current = service();
  const body = h('tbody', {});
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  into.append(
    h('h3', {}, `History of ${current.name}`),
    error,
    h(
      'table',
      { class: 'history', id: `history-${current.id}` },
      h(
        'thead',
        {},
        h('tr', {}, ...['Version', 'Event', 'When', 'Images'].map((t) => h('th', { scope: 'col' }, t))),
      ),
      body,
    ),
  );
  const controller = new AbortController();
  api
    .history(current.id, controller.signal)
    .then((entries) => {
      fill(
        body,
        entries
          .slice()
          .reverse()
          .map((entry) =>
            h(
              'tr',
              { dataset: { event: entry.event } },
              h('td', {}, String(entry.version)),
              h(
                'td',
                {},
                entry.event.replace('_', ' '),
                entry.reason ? h('span', { class: 'image-reason' }, entry.reason) : null,
              ),
              h('td', {}, dateTime(entry.at)),
              h('td', {}, entry.images.map((image) => `${image.name}: ${image.image}`).join(', ')),
            ),
          ),
      );
    })
    .catch((failure) => {
      if (!isAbort(failure)) showMessage(error, `Cannot load the history: ${describe(failure)}`);
    });
  return () => controller.abort();
}

function logsView(into, service) {
  const current = service();
  const id = `logs-${current.id}`;
  const image = h(
    'select',
    { id: `${id}-image` },
    ...current.images.map((i) => h('option', { value: i.name }, i.name)),
  );
  const tail = h('input', { type: 'number', id: `${id}-tail`, min: 0, max: 10000, value: 100 });
  const follow = h('input', { type: 'checkbox', id: `${id}-follow` });
  const output = h('pre', { class: 'log', id: `${id}-output`, tabindex: 0, 'aria-live': 'off' });
  const error = h('p', { class: 'error', role: 'alert', id: `${id}-error`, hidden: true });
  const adminToken = h('input', { type: 'password', id: `${id}-admin-token`, autocomplete: 'off' });
  const adminForm = h(
    'form',
    { class: 'inline-form', hidden: true, id: `${id}-admin` },
    h('label', { for: adminToken.id }, 'Admin token ([SECURITY] admin_token)'),
    adminToken,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Use')),
  );
  let controller = null;

  const load = async () => {
    controller?.abort();
    controller = new AbortController();
    const { signal } = controller;
    fill(output);
    showMessage(error, '');
    try {
      const response = await api.logs(current.id, image.value, {
        tail: tail.value || 100,
        follow: follow.checked,
        signal,
      });
      adminForm.hidden = true;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const atEnd = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
        output.append(decoder.decode(value, { stream: true }));
        if (atEnd) output.scrollTop = output.scrollHeight;
      }
    } catch (failure) {
      if (isAbort(failure)) return;
      if (failure?.status === 403 && failure.code === 'admin_token_required') {
        adminForm.hidden = false;
        showMessage(error, 'Logs need the admin token, not the API token.');
      } else {
        showMessage(error, `Cannot read the log: ${describe(failure)}`);
      }
    }
  };

  adminForm.addEventListener('submit', (event) => {
    event.preventDefault();
    session.setAdminToken(adminToken.value.trim());
    adminToken.value = '';
    load();
  });
  for (const control of [image, tail, follow]) control.addEventListener('change', load);
  into.append(
    h('h3', {}, `Logs of ${current.name}`),
    h(
      'div',
      { class: 'log-controls' },
      h('label', { for: image.id }, 'Image '),
      image,
      h('label', { for: tail.id }, ' Last lines '),
      tail,
      h('label', { class: 'check' }, follow, ' Follow'),
    ),
    adminForm,
    error,
    output,
  );
  load();
  return () => controller?.abort();
}
