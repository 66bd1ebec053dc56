// Deploy: a blueprint pasted or loaded from a file goes to POST /v1/services. Refusals are
// shown next to the text, field by field; an accepted service is followed until it runs
// or fails.

import { ApiError, api, describe, isAbort } from './api.js';
import { every, fill, h, pageHeading, showMessage } from './dom.js';
import { dateTime, stateBadge } from './format.js';

export const title = 'Deploy';

const FOLLOW_MS = 1500;
const SETTLED = new Set(['RUNNING', 'ERROR', 'TERMINATED']);
const EXAMPLE = `name: hello
images:
  - name: web
    image: motey/testbox:latest
    env: { GREETING: "hello from motey" }
    restart: on-failure
`;

export function mount(main, { announce }) {
  let follow = null;

  const text = h('textarea', {
    id: 'blueprint',
    name: 'blueprint',
    rows: '12',
    spellcheck: 'false',
    autocapitalize: 'off',
    autocomplete: 'off',
    required: true,
    'aria-describedby': 'blueprint-hint blueprint-errors',
  });
  const file = h('input', {
    type: 'file',
    id: 'blueprint-file',
    accept: '.yaml,.yml,.json,application/x-yaml,application/yaml,text/yaml,application/json',
  });
  const errors = h('div', { class: 'errors', id: 'blueprint-errors', role: 'alert', tabindex: '-1', hidden: true });
  const submit = h('button', { type: 'submit', id: 'deploy' }, 'Deploy');
  const progress = h('section', { id: 'deploy-progress', class: 'card progress', hidden: true, 'aria-live': 'polite' });

  const clearErrors = () => {
    errors.hidden = true;
    errors.replaceChildren();
    text.removeAttribute('aria-invalid');
  };

  const showRefusal = (failure) => {
    const located = failure instanceof ApiError ? failure.fields : [];
    fill(
      errors,
      h('h2', {}, 'The agent refused the blueprint'),
      located.length === 0 ? h('p', { class: 'message' }, describe(failure)) : null,
      located.length > 0
        ? h(
            'ul',
            { class: 'field-errors' },
            located.map(({ field, message }) =>
              h('li', { dataset: { field } }, h('code', { class: 'field' }, field || '(blueprint)'), ' ', h('span', { class: 'message' }, message)),
            ),
          )
        : null,
    );
    errors.hidden = false;
    text.setAttribute('aria-invalid', 'true');
  };

  file.addEventListener('change', async () => {
    const chosen = file.files?.[0];
    if (!chosen) return;
    try {
      text.value = await chosen.text();
      clearErrors();
      announce(`Loaded ${chosen.name}`);
    } catch (failure) {
      showRefusal(new Error(`cannot read ${chosen.name}: ${failure.message}`));
    }
  });
  text.addEventListener('input', () => text.removeAttribute('aria-invalid'));
  text.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  const form = h(
    'form',
    {
      id: 'deploy-form',
      async onsubmit(event) {
        event.preventDefault();
        clearErrors();
        if (!text.value.trim()) {
          showRefusal(new Error('the blueprint is empty: paste it or load a file'));
          text.focus();
          return;
        }
        submit.disabled = true;
        try {
          const service = await api.deploy(text.value);
          announce(`Accepted ${service.name}`);
          followService(service);
        } catch (failure) {
          showRefusal(failure);
          errors.focus();
        } finally {
          submit.disabled = false;
        }
      },
    },
    h(
      'div',
      { class: 'field' },
      h('label', { for: 'blueprint' }, 'Blueprint (YAML)'),
      h(
        'p',
        { class: 'hint', id: 'blueprint-hint' },
        'Our format (',
        h('code', {}, 'name'),
        ', ',
        h('code', {}, 'images'),
        ') or Motey’s (',
        h('code', {}, 'service_name'),
        '). Ctrl+Enter deploys.',
      ),
      h('div', { class: 'editor' }, text, errors),
    ),
    h('div', { class: 'field' }, h('label', { for: 'blueprint-file' }, 'Or load a blueprint file'), file),
    h(
      'div',
      { class: 'actions' },
      submit,
      h(
        'button',
        {
          type: 'button',
          class: 'secondary',
          id: 'insert-example',
          onclick() {
            text.value = EXAMPLE;
            clearErrors();
            text.focus();
          },
        },
        'Insert an example',
      ),
    ),
  );

  function followService(service) {
    follow?.stop();
    const seen = [];
    const state = h('span', { class: 'state-slot' });
    const images = h('ul', { class: 'image-states' });
    const history = h('ol', { class: 'history', 'aria-label': 'States so far' });
    const outcome = h('p', { class: 'outcome', id: 'deploy-outcome', hidden: true });
    const followError = h('p', { class: 'error', role: 'alert', hidden: true });
    fill(
      progress,
      h('h2', {}, 'Following ', h('span', { id: 'deploy-service-name' }, service.name)),
      h('p', {}, 'Service ', h('code', { id: 'deploy-service-id' }, service.id), ': ', state),
      images,
      history,
      outcome,
      followError,
    );
    progress.hidden = false;
    progress.dataset.serviceId = service.id;
    const show = (current) => {
      progress.dataset.state = current.state;
      if (seen[seen.length - 1] !== current.state) {
        seen.push(current.state);
        history.append(h('li', {}, stateBadge(current.state), ' ', dateTime(new Date())));
      }
      fill(state, stateBadge(current.state));
      fill(
        images,
        current.images.map((image) =>
          h(
            'li',
            {},
            h('strong', {}, image.name),
            ' on ',
            image.node || h('em', {}, 'no node yet'),
            ': ',
            stateBadge(image.state),
            image.reason ? ` ${image.reason}` : '',
          ),
        ),
      );
      if (SETTLED.has(current.state)) {
        follow?.stop();
        follow = null;
        outcome.hidden = false;
        fill(
          outcome,
          current.state === 'RUNNING'
            ? [`${current.name} is running. `, h('a', { href: '#/services' }, 'See it in Services')]
            : [`${current.name} is ${current.state}${current.reason ? `: ${current.reason}` : ''}. `, h('a', { href: '#/services' }, 'See it in Services')],
        );
        announce(`${current.name} is ${current.state}`);
      }
    };
    show(service);
    if (SETTLED.has(service.state)) return;
    follow = every(FOLLOW_MS, async (signal) => {
      try {
        show(await api.service(service.id, signal));
        showMessage(followError, '');
      } catch (failure) {
        if (!isAbort(failure)) showMessage(followError, `Cannot follow ${service.name}: ${describe(failure)}`);
      }
    });
  }

  main.append(
    h(
      'section',
      { class: 'page' },
      h('div', { class: 'page-head' }, pageHeading('Deploy a blueprint')),
      h('div', { class: 'card' }, form),
      progress,
    ),
  );
  return () => follow?.stop();
}
