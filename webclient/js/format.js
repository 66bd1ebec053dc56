// How values look on the page.

import { h } from './dom.js';

const SERVICE_STATES = [
  'INITIAL',
  'INSTANTIATING',
  'RUNNING',
  'STOPPING',
  'TERMINATED',
  'ERROR',
  'UPDATING',
  'ROLLED_BACK',
];
const NODE_STATES = ['alive', 'suspect', 'gone'];
const NODE_PHASES = ['commissioning', 'provisioning', 'operating', 'recovering', 'decommissioning'];

/** A node's lifecycle phase in words (and colour), with why it is there if not operating. */
export function phaseBadge(phase, reason, stale = false) {
  if (!phase) return h('span', { class: 'phase phase-unknown', dataset: { phase: '' } }, 'phase not announced');
  const name = NODE_PHASES.includes(phase) ? phase : 'unknown';
  return h(
    'span',
    { class: `phase phase-${name}`, dataset: { phase: String(phase) }, title: reason || null },
    stale ? `last announced: ${phase}` : String(phase),
    reason ? h('span', { class: 'phase-reason' }, reason) : null,
  );
}

/** A coloured badge that also says the state in words, so colour is never the only cue. */
export function stateBadge(state) {
  const known = SERVICE_STATES.includes(state) || NODE_STATES.includes(state);
  const name = known ? String(state).toLowerCase() : 'unknown';
  return h('span', { class: `state state-${name}`, dataset: { state: String(state) } }, String(state));
}

export function bytes(count) {
  if (!Number.isFinite(count)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function percent(value) {
  return Number.isFinite(value) ? `${value.toFixed(value < 10 ? 1 : 0)} %` : '–';
}

export function duration(seconds) {
  if (!Number.isFinite(seconds)) return '–';
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days > 0) return `${days} d ${hours} h`;
  if (hours > 0) return `${hours} h ${minutes} min`;
  if (minutes > 0) return `${minutes} min`;
  return `${Math.floor(seconds)} s`;
}

/** "12 s ago" with the exact time in a <time> element. */
export function ago(timestamp, now = Date.now()) {
  if (!timestamp) return null;
  const at = new Date(timestamp);
  if (Number.isNaN(at.getTime())) return String(timestamp);
  const seconds = Math.max(0, Math.round((now - at.getTime()) / 1000));
  let text;
  if (seconds < 60) text = `${seconds} s ago`;
  else if (seconds < 3600) text = `${Math.floor(seconds / 60)} min ago`;
  else if (seconds < 86400) text = `${Math.floor(seconds / 3600)} h ago`;
  else text = `${Math.floor(seconds / 86400)} d ago`;
  return h('time', { datetime: at.toISOString(), title: at.toLocaleString() }, text);
}

export function dateTime(timestamp) {
  const at = new Date(timestamp);
  if (Number.isNaN(at.getTime())) return String(timestamp ?? '–');
  return h('time', { datetime: at.toISOString() }, at.toLocaleString());
}

export function shortId(id) {
  return id ? String(id).slice(0, 12) : '–';
}
