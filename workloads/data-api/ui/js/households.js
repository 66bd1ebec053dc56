// FR-08: every household with its participant and consent, searchable by name, email or
// id and filterable by consent, with the counts the research group follows.

import { api, describe, isAbort } from './api.js';
import { fill, h, pageHeading, showMessage } from './dom.js';
import { dateTime } from './format.js';

export const title = 'Households';

const CONSENT_WORDS = { NOT_GRANTED: 'not granted', GRANTED: 'granted', REVOKED: 'revoked' };

export function mount(main) {
  const controller = new AbortController();
  let households = [];

  const search = h('input', {
    type: 'search',
    id: 'search',
    name: 'search',
    placeholder: 'Name, email or id',
    autocomplete: 'off',
    spellcheck: 'false',
    'aria-controls': 'households',
  });
  const consent = h(
    'select',
    { id: 'consent-filter', name: 'consent', 'aria-controls': 'households' },
    h('option', { value: '' }, 'Any consent'),
    Object.entries(CONSENT_WORDS).map(([state, words]) => h('option', { value: state }, `Consent ${words}`)),
  );
  const counts = h('p', { class: 'counts', id: 'counts', 'aria-live': 'polite' });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const list = h('div', { id: 'households', 'aria-busy': 'true' }, h('p', { class: 'loading' }, 'Loading…'));

  main.append(
    h(
      'div',
      { class: 'page' },
      h('div', { class: 'page-head' }, pageHeading('Households'), h('a', { class: 'button', href: '#/register', id: 'register-link' }, 'Register a participant')),
      h(
        'form',
        { class: 'toolbar', role: 'search', onsubmit: (e) => e.preventDefault() },
        h('div', { class: 'field' }, h('label', { for: 'search' }, 'Search'), search),
        h('div', { class: 'field' }, h('label', { for: 'consent-filter' }, 'Consent'), consent),
      ),
      counts,
      error,
      list,
    ),
  );

  const render = () => {
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const state = consent.value;
    const shown = households.filter((household) => {
      if (state && household.consent.state !== state) return false;
      const haystack = [household.id, household.user?.name, household.user?.email].filter(Boolean).join(' ').toLowerCase();
      return words.every((word) => haystack.includes(word));
    });
    const by = (s) => households.filter((x) => x.consent.state === s).length;
    fill(
      counts,
      `${households.length} ${households.length === 1 ? 'household' : 'households'}: `,
      h('strong', {}, `${by('GRANTED')} participating`),
      `, ${by('NOT_GRANTED')} not granted yet, ${by('REVOKED')} revoked.`,
      shown.length === households.length ? '' : ` Showing ${shown.length}.`,
    );
    list.setAttribute('aria-busy', 'false');
    if (households.length === 0) {
      fill(list, h('p', { class: 'empty' }, 'No household is registered yet.'));
      return;
    }
    if (shown.length === 0) {
      fill(list, h('p', { class: 'empty' }, 'No household matches.'));
      return;
    }
    fill(
      list,
      h(
        'table',
        { class: 'households' },
        h('caption', { class: 'visually-hidden' }, 'Registered households'),
        h(
          'thead',
          {},
          h('tr', {}, ['Participant', 'Consent', 'Devices', 'Meters', 'Registered', ''].map((t) => h('th', { scope: 'col' }, t))),
        ),
        h(
          'tbody',
          {},
          shown.map((household) =>
            h(
              'tr',
              { dataset: { household: household.id, consent: household.consent.state } },
              h(
                'td',
                { 'data-label': 'Participant' },
                household.user
                  ? [h('span', { class: 'name' }, household.user.name), h('br'), h('span', { class: 'email' }, household.user.email)]
                  : h('span', { class: 'muted' }, 'anonymized'),
                h('br'),
                h('code', { class: 'id' }, household.id),
              ),
              h('td', { 'data-label': 'Consent' }, consentBadge(household.consent)),
              h('td', { 'data-label': 'Devices' }, String(household.measurement_devices.length)),
              h('td', { 'data-label': 'Meters' }, household.meters.map((m) => `${m.type === 'ELECTRICITY' ? 'electricity' : 'generation'} ${m.model}`).join(', ')),
              h('td', { 'data-label': 'Registered' }, dateTime(household.created_at)),
              h(
                'td',
                { class: 'row-actions' },
                h(
                  'a',
                  { class: 'button secondary small', href: `#/households/${household.id}`, 'aria-label': `${household.user ? 'Edit' : 'View'} ${household.user?.name || household.id}` },
                  household.user ? 'Edit' : 'View',
                ),
              ),
            ),
          ),
        ),
      ),
    );
  };

  search.addEventListener('input', render);
  consent.addEventListener('change', render);

  api
    .households(controller.signal)
    .then((answer) => {
      households = answer.households.sort((a, b) => (b.created_at > a.created_at ? 1 : -1));
      render();
    })
    .catch((failure) => {
      if (isAbort(failure)) return;
      list.setAttribute('aria-busy', 'false');
      list.replaceChildren();
      showMessage(error, `Cannot load the households: ${describe(failure)}`);
    });

  return () => controller.abort();
}

/** The consent in words (colour is never the only cue), with its date. */
export function consentBadge(consent) {
  const at = consent.state === 'REVOKED' ? consent.revoked_at : consent.granted_at;
  return h(
    'span',
    { class: `consent consent-${consent.state.toLowerCase()}`, dataset: { state: consent.state } },
    CONSENT_WORDS[consent.state] || consent.state,
    at ? h('span', { class: 'since' }, ' ', dateTime(at)) : null,
  );
}
