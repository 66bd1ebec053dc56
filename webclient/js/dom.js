// Building the page from data. Text always goes in as text nodes, never as markup, so
// names and reasons coming from blueprints cannot inject anything.

/**
 * Creates an element: `h('button', {class: 'danger', onclick: f}, 'Terminate')`.
 * Attributes whose value is `false`, `null` or `undefined` are left out; `true` sets an
 * empty attribute; `on…` functions become event listeners; `dataset` sets data-*.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (name === 'value' && 'value' in element) {
      element.value = value;
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `element`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** Shows `message` in `element` (hidden when empty). */
export function showMessage(element, message) {
  element.textContent = message || '';
  element.hidden = !message;
}

/**
 * Runs `task(signal)` now and then every `ms` after the previous run ended, until the
 * returned function is called; a run still under way is then aborted. Runs are skipped
 * while the tab is hidden and resumed when it shows again.
 */
export function every(ms, task) {
  let timer = null;
  let stopped = false;
  let controller = null;
  const run = async () => {
    timer = null;
    if (stopped) return;
    if (document.hidden) return;
    controller = new AbortController();
    try {
      await task(controller.signal);
    } finally {
      controller = null;
      if (!stopped) timer = setTimeout(run, ms);
    }
  };
  const onVisibility = () => {
    if (!document.hidden && timer === null && controller === null) run();
  };
  document.addEventListener('visibilitychange', onVisibility);
  run();
  return {
    stop() {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
      controller?.abort();
      document.removeEventListener('visibilitychange', onVisibility);
    },
    /** Runs at once (after a change made by the user) instead of waiting. */
    now() {
      if (stopped || controller !== null) return;
      if (timer !== null) clearTimeout(timer);
      run();
    },
  };
}

/** A page heading that takes the focus when the page opens. */
export function pageHeading(text) {
  return h('h1', { tabindex: '-1', class: 'page-title' }, text);
}
