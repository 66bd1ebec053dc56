// Form fields named by the JSON path of the value they hold (`user.email`,
// `pv_systems[1].tilt`), so a refusal of the Data API, which names the same path, is
// shown next to the input it belongs to.

import { h } from './dom.js';

/** A stable element id for a JSON path. */
export function idFor(path) {
  return `f-${path.replace(/[^A-Za-z0-9]+/g, '-').replace(/-$/, '')}`;
}

/**
 * A labelled input: `field({path: 'user.name', label: 'Name', required: true})`.
 * `options` ([value, text] pairs) makes it a <select>; `type: 'checkbox'` a check box.
 */
export function field({ path, label, type = 'text', value, hint, options, ...attributes }) {
  const id = idFor(path);
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  const describedBy = [hintId, errorId].filter(Boolean).join(' ');
  const common = { id, name: path, 'aria-describedby': describedBy, dataset: { path }, ...attributes };
  const error = h('p', { class: 'field-error', id: errorId, hidden: true });
  const hintElement = hint ? h('p', { class: 'hint', id: hintId }, hint) : null;
  if (type === 'checkbox') {
    const input = h('input', { ...common, type: 'checkbox', checked: Boolean(value) });
    return h('div', { class: 'field check-field' }, h('label', { class: 'check', for: id }, input, ' ', label), hintElement, error);
  }
  let input;
  if (options) {
    input = h(
      'select',
      common,
      options.map(([optionValue, text]) =>
        h('option', { value: optionValue, selected: String(optionValue) === String(value ?? '') }, text),
      ),
    );
  } else {
    input = h('input', { ...common, type, value: value ?? '' });
  }
  return h('div', { class: 'field' }, h('label', { for: id }, label, attributes.required ? h('span', { class: 'required', 'aria-hidden': 'true' }, ' *') : null), input, hintElement, error);
}

/** The control holding `path` in `form`, if any. */
export function control(form, path) {
  return form.querySelector(`[data-path="${CSS.escape(path)}"]`);
}

export function text(form, path) {
  const input = control(form, path);
  return input ? input.value.trim() : '';
}

/** The number in the input at `path`; `null` when empty, `NaN` when not a number. */
export function number(form, path) {
  const value = text(form, path);
  if (value === '') return null;
  return Number(value);
}

export function checked(form, path) {
  return Boolean(control(form, path)?.checked);
}

/** Removes every field error of `form`. */
export function clearErrors(form) {
  for (const error of form.querySelectorAll('.field-error')) {
    error.textContent = '';
    error.hidden = true;
  }
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
}

/**
 * Shows `message` next to the control of `path`, or of the nearest enclosing path that
 * has one (`meters[2].uuid` → the `meters[2]` group). Returns the element it marked, or
 * null when nothing in the form matches.
 */
export function showError(form, path, message) {
  let target = path;
  while (target) {
    const element = form.querySelector(`[data-path="${CSS.escape(target)}"]`);
    if (element) {
      const error = document.getElementById(`${idFor(target)}-error`);
      if (error) {
        error.textContent = error.textContent ? `${error.textContent} ${message}` : message;
        error.hidden = false;
      }
      element.setAttribute('aria-invalid', 'true');
      return element;
    }
    target = parent(target);
  }
  return null;
}

function parent(path) {
  const cut = Math.max(path.lastIndexOf('.'), path.lastIndexOf('['));
  return cut > 0 ? path.slice(0, cut) : '';
}

/** Clears a field's error as soon as it is edited again. */
export function clearOnInput(form) {
  const reset = (event) => {
    const path = event.target?.dataset?.path;
    if (!path) return;
    event.target.removeAttribute('aria-invalid');
    const error = document.getElementById(`${idFor(path)}-error`);
    if (error) {
      error.textContent = '';
      error.hidden = true;
    }
  };
  form.addEventListener('input', reset);
  form.addEventListener('change', reset);
}
