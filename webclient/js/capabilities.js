// Capabilities of this node: what images may ask for (an optical probe, a Zigbee stick).
// Adding one may let waiting images be placed here at once.

import { ApiError, api, describe, isAbort } from './api.js';
import { fill, h, pageHeading, showMessage } from './dom.js';

export const title = 'Capabilities';

export function mount(main, { announce }) {
  const controller = new AbortController();
  const rows = h('tbody', { id: 'capability-rows' });
  const table = h(
    'table',
    { class: 'capabilities', id: 'capability-table', hidden: true },
    h('caption', { class: 'visually-hidden' }, 'Capabilities of this node'),
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        h('th', { scope: 'col' }, 'Capability'),
        h('th', { scope: 'col' }, 'Type'),
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')),
      ),
    ),
    rows,
  );
  const empty = h('p', { class: 'empty', id: 'no-capabilities', hidden: true }, 'This node offers no capabilities.');
  const listError = h('p', { class: 'error', role: 'alert', id: 'capabilities-error', hidden: true });

  const name = h('input', {
    id: 'capability-name',
    name: 'capability',
    required: true,
    maxlength: '128',
    autocomplete: 'off',
    spellcheck: 'false',
    'aria-describedby': 'capability-name-error',
  });
  const type = h('input', {
    id: 'capability-type',
    name: 'capability_type',
    required: true,
    maxlength: '64',
    list: 'capability-types',
    value: 'hardware',
    autocomplete: 'off',
    'aria-describedby': 'capability-type-error',
  });
  const fieldErrors = {
    capability: h('p', { class: 'field-error', id: 'capability-name-error', hidden: true }),
    capability_type: h('p', { class: 'field-error', id: 'capability-type-error', hidden: true }),
  };
  const formError = h('p', { class: 'error', role: 'alert', id: 'capability-form-error', hidden: true });
  const addButton = h('button', { type: 'submit', id: 'add-capability' }, 'Add');

  const show = (capabilities) => {
    fill(rows, capabilities.map((capability) => row(capability)));
    table.hidden = capabilities.length === 0;
    empty.hidden = capabilities.length > 0;
  };

  const load = async () => {
    try {
      show(await api.capabilities(controller.signal));
      showMessage(listError, '');
    } catch (failure) {
      if (!isAbort(failure)) showMessage(listError, `Cannot load the capabilities: ${describe(failure)}`);
    }
  };

  function row(capability) {
    const label = `${capability.capability} (${capability.capability_type})`;
    return h(
      'tr',
      { dataset: { capability: capability.capability, capabilityType: capability.capability_type } },
      h('td', { dataset: { label: 'Capability' } }, capability.capability),
      h('td', { dataset: { label: 'Type' } }, capability.capability_type),
      h(
        'td',
        { class: 'row-actions' },
        h(
          'button',
          {
            type: 'button',
            class: 'secondary',
            'aria-label': `Remove ${label}`,
            dataset: { action: 'remove' },
            async onclick(event) {
              const button = event.currentTarget;
              button.disabled = true;
              // Where the focus goes once this row is gone: the next row's button, or the form.
              const position = [...rows.querySelectorAll('button')].indexOf(button);
              try {
                show(await api.removeCapability(capability));
                showMessage(listError, '');
                announce(`Removed ${label}`);
                const buttons = rows.querySelectorAll('button');
                (buttons[Math.min(position, buttons.length - 1)] || name).focus();
              } catch (failure) {
                button.disabled = false;
                showMessage(listError, `Cannot remove ${label}: ${describe(failure)}`);
              }
            },
          },
          'Remove',
        ),
      ),
    );
  }

  const clearErrors = () => {
    for (const element of Object.values(fieldErrors)) showMessage(element, '');
    name.removeAttribute('aria-invalid');
    type.removeAttribute('aria-invalid');
    showMessage(formError, '');
  };

  const form = h(
    'form',
    {
      id: 'capability-form',
      class: 'inline-form',
      async onsubmit(event) {
        event.preventDefault();
        clearErrors();
        const capability = { capability: name.value.trim(), capability_type: type.value.trim() };
        addButton.disabled = true;
        try {
          show(await api.addCapability(capability));
          announce(`Added ${capability.capability} (${capability.capability_type})`);
          name.value = '';
          name.focus();
        } catch (failure) {
          showMessage(formError, `Cannot add the capability: ${describe(failure)}`);
          if (failure instanceof ApiError) {
            for (const { field, message } of failure.fields) {
              // The API names fields as `[0].capability`: this form sends one.
              const key = String(field).replace(/^\[\d+\]\.?/, '');
              if (fieldErrors[key]) {
                showMessage(fieldErrors[key], message);
                (key === 'capability' ? name : type).setAttribute('aria-invalid', 'true');
              }
            }
          }
        } finally {
          addButton.disabled = false;
        }
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'capability-name' }, 'Capability'), name, fieldErrors.capability),
    h(
      'div',
      { class: 'field' },
      h('label', { for: 'capability-type' }, 'Type'),
      type,
      h('datalist', { id: 'capability-types' }, h('option', { value: 'hardware' }), h('option', { value: 'software' })),
      fieldErrors.capability_type,
    ),
    h('div', { class: 'actions' }, addButton),
  );

  main.append(
    h(
      'section',
      { class: 'page' },
      h('div', { class: 'page-head' }, pageHeading('Capabilities of this node')),
      h(
        'p',
        { class: 'hint' },
        'An image whose blueprint lists capabilities runs only on a node that offers all of them.',
      ),
      h(
        'section',
        { class: 'card', 'aria-labelledby': 'add-capability-title' },
        h('h2', { id: 'add-capability-title' }, 'Add a capability'),
        form,
        formError,
      ),
      listError,
      empty,
      table,
    ),
  );
  load();
  return () => controller.abort();
}
