// FR-09: the health of every measurement device — component versions, last activity,
// newest measurement, the household's consent — refreshed in place. Devices silent for
// longer than two report cycles (the Data API's --report-interval) are highlighted; the
// Data API judges that by its own clock and says why.

import { api, describe, isAbort } from './api.js';
import { every, fill, h, pageHeading, showMessage } from './dom.js';
import { ago, duration } from './format.js';
import { consentBadge } from './households.js';

export const title = 'Device status';

const REFRESH_MS = 5000;

const HEALTH = {
  reporting: 'reporting',
  silent: 'silent',
  waiting_for_consent: 'waiting for consent',
  never_seen: 'never seen',
  retired: 'retired',
};

export function mount(main, { announce, who }) {
  const threshold = h('p', { class: 'threshold', id: 'threshold' });
  const counts = h('p', { class: 'counts', id: 'counts', 'aria-live': 'polite' });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const onlySilent = h('input', { type: 'checkbox', id: 'only-silent', name: 'only-silent' });
  const list = h('div', { id: 'devices', 'aria-busy': 'true' }, h('p', { class: 'loading' }, 'Loading…'));
  let latest = null;
  let silentBefore = null;

  main.append(
    h(
      'div',
      { class: 'page' },
      h('div', { class: 'page-head' }, pageHeading('Device status')),
      threshold,
      h('div', { class: 'toolbar' }, h('label', { class: 'check', for: 'only-silent' }, onlySilent, ' Only silent devices')),
      counts,
      error,
      list,
    ),
  );

  const showThreshold = (answer) => {
    fill(
      threshold,
      'Report cycle ',
      h('strong', { id: 'report-cycle' }, duration(answer.report_interval_seconds)),
      '. Devices that have not reported, or delivered no new measurement, for longer than two report cycles (',
      h('strong', { id: 'silent-after' }, duration(answer.silent_after_seconds)),
      ') are highlighted as ',
      h('span', { class: 'health health-silent' }, 'silent'),
      '.',
    );
  };
  showThreshold(who);

  const render = () => {
    if (!latest) return;
    // Times are shown against the Data API's clock, which judged the silence.
    const skew = Date.parse(latest.now) - latest.fetchedAt;
    const now = Date.now() + skew;
    // Silent devices first: they are what this page is for.
    const devices = latest.households
      .flatMap((household) => household.measurement_devices.map((device) => ({ household, device })))
      .sort((a, b) => Number(b.device.health.state === 'silent') - Number(a.device.health.state === 'silent'));
    const silent = devices.filter(({ device }) => device.health.state === 'silent');
    const shown = onlySilent.checked ? silent : devices;
    fill(
      counts,
      `${devices.length} ${devices.length === 1 ? 'device' : 'devices'}, `,
      h('strong', { class: silent.length ? 'has-silent' : '' }, `${silent.length} silent`),
      '.',
    );
    list.setAttribute('aria-busy', 'false');
    if (shown.length === 0) {
      fill(list, h('p', { class: 'empty' }, devices.length === 0 ? 'No measurement device is registered yet.' : 'No device is silent.'));
      return;
    }
    fill(
      list,
      h(
        'table',
        { class: 'devices' },
        h('caption', { class: 'visually-hidden' }, 'Measurement devices'),
        h(
          'thead',
          {},
          h('tr', {}, ['Device', 'Health', 'Household', 'Consent', 'Versions', 'Last activity', 'Last measurement'].map((t) => h('th', { scope: 'col' }, t))),
        ),
        h(
          'tbody',
          {},
          shown.map(({ household, device }) =>
            h(
              'tr',
              {
                class: device.health.state === 'silent' ? 'silent' : '',
                dataset: { device: device.uuid, health: device.health.state },
              },
              h('th', { scope: 'row', 'data-label': 'Device' }, h('span', { class: 'name' }, device.name || 'unnamed device'), h('br'), h('code', { class: 'id' }, device.uuid)),
              h('td', { 'data-label': 'Health' }, healthBadge(device.health, now)),
              h(
                'td',
                { 'data-label': 'Household' },
                household.participant ? h('span', { class: 'name' }, household.participant) : null,
                household.participant ? h('br') : null,
                who.role === 'researcher' ? h('a', { href: `#/households/${household.id}` }, h('code', { class: 'id' }, household.id)) : h('code', { class: 'id' }, household.id),
              ),
              h('td', { 'data-label': 'Consent' }, consentBadge(household.consent)),
              h('td', { 'data-label': 'Versions' }, versions(device.component_versions)),
              h('td', { 'data-label': 'Last activity' }, ago(device.last_activity, now) || h('span', { class: 'muted' }, 'never')),
              h('td', { 'data-label': 'Last measurement' }, ago(device.last_measurement, now) || h('span', { class: 'muted' }, 'none')),
            ),
          ),
        ),
      ),
    );
    const silentNow = new Set(silent.map(({ device }) => device.uuid));
    if (silentBefore) {
      const newly = [...silentNow].filter((uuid) => !silentBefore.has(uuid)).length;
      if (newly > 0) announce(`${newly} ${newly === 1 ? 'device turned' : 'devices turned'} silent`);
    }
    silentBefore = silentNow;
  };

  onlySilent.addEventListener('change', render);

  const poll = every(REFRESH_MS, async (signal) => {
    try {
      const answer = await api.households(signal);
      latest = { ...answer, fetchedAt: Date.now() };
      showThreshold(answer);
      showMessage(error, '');
      render();
    } catch (failure) {
      if (isAbort(failure)) return;
      showMessage(error, `Cannot load the device status: ${describe(failure)}`);
    }
  });

  return () => poll.stop();
}

function healthBadge(health, now) {
  let detail = null;
  if (health.state === 'silent') {
    const since = health.silent_since ? Date.parse(health.silent_since) : NaN;
    const how = health.cause === 'no_measurements' ? 'no new measurement' : 'no contact';
    detail = Number.isFinite(since) ? `${how} for ${duration((now - since) / 1000)}` : `${how} ever`;
  }
  return h(
    'span',
    { class: `health health-${health.state.replace(/_/g, '-')}`, dataset: { state: health.state, cause: health.cause || '' } },
    HEALTH[health.state] || health.state,
    detail ? h('span', { class: 'detail' }, ` — ${detail}`) : null,
  );
}

function versions(components) {
  const entries = Object.entries(components || {});
  if (entries.length === 0) return h('span', { class: 'muted' }, 'not reported');
  return h(
    'ul',
    { class: 'tags' },
    entries.map(([component, version]) => h('li', { class: 'tag' }, `${component} ${version}`)),
  );
}
