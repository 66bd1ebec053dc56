// Registration (FR-06) and correction (FR-07) of a participant's registration details
// (section 3.1.2): contact details, address and location, household metadata, the
// measurement devices with their meters, and the PV systems with their generation
// meters. The same form serves both; a correction addresses devices, meters and PV
// systems by their uuids, which the Data API assigned at registration.

import { ApiError, api, describe, isAbort } from './api.js';
import { fill, h, pageHeading, showMessage } from './dom.js';
import { dateTime } from './format.js';
import { checked, clearErrors, clearOnInput, control, field, idFor, number, showError, text } from './form.js';

export function title(params) {
  return params?.[0] ? 'Participant' : 'Register a participant';
}

const METER_TYPES = [
  ['ELECTRICITY', 'Electricity meter'],
  ['PV-GENERATION', 'PV generation meter'],
];
const METER_MODELS = ['MT681', 'MT175', 'EHZ', 'DD3', 'EASY'].map((m) => [m, m]);
const SCOPES = ['account', 'household', 'consent', 'measurement-read', 'measurement-write'];
const CONSENT_WORDS = { NOT_GRANTED: 'not granted', GRANTED: 'granted', REVOKED: 'revoked' };

/** A message the next page shows once (after a registration, say). */
let flash = '';

const EMPTY = {
  user: { name: '', email: '' },
  address: { street: '', house_number: '', postal_code: '', city: '', country: 'DE' },
  location: { latitude: '', longitude: '' },
  metadata: { children: 0, adults: 1, employed_adults: 0, ev_charger: false, heat_pump: false, home_battery: false },
  measurement_devices: [{ name: '', scopes: [...SCOPES] }],
  meters: [{ type: 'ELECTRICITY', model: 'MT681', measurement_device: 0 }],
  pv_systems: [],
};

export function mount(main, { announce, go, params }) {
  const id = params?.[0] || null;
  const controller = new AbortController();
  const page = h('div', { class: 'page' });
  main.append(page);
  if (!id) {
    showForm(page, { model: structuredClone(EMPTY), announce, go, household: null });
  } else {
    fill(page, pageHeading('Participant'), h('p', { class: 'loading' }, 'Loading…'));
    api
      .household(id, controller.signal)
      .then((household) => {
        showForm(page, { model: modelOf(household), announce, go, household });
        page.querySelector('h1')?.focus();
      })
      .catch((failure) => {
        if (isAbort(failure)) return;
        fill(
          page,
          pageHeading('Participant'),
          h('p', { class: 'error', role: 'alert' }, failure instanceof ApiError && failure.status === 404 ? `There is no household ${id}.` : `Cannot load the household: ${describe(failure)}`),
          h('p', {}, h('a', { href: '#/households' }, 'Back to the households')),
        );
      });
  }
  return () => controller.abort();
}

/** The form's model of a stored household (from GET /management/household/{id}). */
function modelOf(household) {
  return {
    user: household.user || { name: '', email: '' },
    address: household.address || { ...EMPTY.address },
    location: household.location || { latitude: '', longitude: '' },
    metadata: household.metadata || { ...EMPTY.metadata },
    measurement_devices: household.measurement_devices.map((d) => ({ uuid: d.uuid, name: d.name || '', scopes: d.scopes })),
    meters: household.meters.map((m) => ({
      uuid: m.uuid,
      type: m.type,
      model: m.model,
      measurement_device: Math.max(0, household.measurement_devices.findIndex((d) => d.uuid === m.measurement_device)),
    })),
    pv_systems: (household.pv_systems || []).map((p) => ({
      uuid: p.uuid,
      nominal_power: p.nominal_power,
      azimuth: p.azimuth,
      tilt: p.tilt,
      installation_date: p.installation_date || '',
      generation_meter: household.meters.findIndex((m) => m.uuid === p.generation_meter) >= 0 ? household.meters.findIndex((m) => m.uuid === p.generation_meter) : '',
    })),
  };
}

function showForm(page, { model, announce, go, household }) {
  const editing = Boolean(household);
  /** Stored devices, meters and PV systems the researcher removed, sent with the next correction. */
  let removed = noneRemoved();
  const removePv = (current, index) => {
    const [gone] = current.pv_systems.splice(index, 1);
    if (gone?.uuid) removed.pv_systems.push(gone.uuid);
  };
  const removeStored = (list, current, index, remove) => {
    const gone = current[list][index];
    remove(current, index);
    if (gone?.uuid && !gone.added) removed[list].push(gone.uuid);
  };
  // A device added by a correction gets its uuid here, so that meters added with it can
  // name it in the same request.
  const newDevice = () => (editing ? { uuid: crypto.randomUUID(), added: true } : {});
  const anonymized = Boolean(household?.anonymized);
  const summary = h('div', { class: 'errors', id: 'form-errors', role: 'alert', tabindex: '-1', hidden: true });
  const saved = h('p', { class: 'notice', id: 'saved', role: 'status', hidden: true });
  const submit = h('button', { type: 'submit', id: 'save' }, editing ? 'Save corrections' : 'Register participant');
  const lists = {
    devices: h('div', { class: 'rows', id: 'devices' }),
    meters: h('div', { class: 'rows', id: 'meters' }),
    pv: h('div', { class: 'rows', id: 'pv-systems' }),
  };

  const form = h(
    'form',
    { id: 'registration-form', class: 'registration', novalidate: true, 'aria-describedby': 'form-errors' },
    section('Contact details', 'contact', [
      field({ path: 'user.name', label: 'Name', value: model.user.name, required: true, autocomplete: 'off', maxlength: 200 }),
      field({ path: 'user.email', label: 'Email address', type: 'email', value: model.user.email, required: true, autocomplete: 'off', spellcheck: 'false', hint: 'Unique per household; the device certificate is issued for it.' }),
    ]),
    section('Address', 'address', [
      h(
        'div',
        { class: 'grid street' },
        field({ path: 'address.street', label: 'Street', value: model.address.street, required: true, maxlength: 200 }),
        field({ path: 'address.house_number', label: 'House number', value: model.address.house_number, required: true, maxlength: 20 }),
      ),
      h(
        'div',
        { class: 'grid city' },
        field({ path: 'address.postal_code', label: 'Postal code', value: model.address.postal_code, required: true, maxlength: 20, inputmode: 'numeric' }),
        field({ path: 'address.city', label: 'City', value: model.address.city, required: true, maxlength: 200 }),
        field({ path: 'address.country', label: 'Country', value: model.address.country, required: true, maxlength: 2, hint: 'ISO code, e.g. DE', autocapitalize: 'characters' }),
      ),
    ]),
    section('Location', 'location', [
      h('p', { class: 'hint' }, 'WGS 84 coordinates of the household, in decimal degrees. They are kept for geospatial analysis; after a revocation only a displaced point remains.'),
      h(
        'div',
        { class: 'grid pair' },
        field({ path: 'location.latitude', label: 'Latitude', type: 'number', step: 'any', min: -90, max: 90, value: model.location.latitude, required: true, inputmode: 'decimal' }),
        field({ path: 'location.longitude', label: 'Longitude', type: 'number', step: 'any', min: -180, max: 180, value: model.location.longitude, required: true, inputmode: 'decimal' }),
      ),
    ]),
    section('Household', 'metadata', [
      h(
        'div',
        { class: 'grid triple' },
        field({ path: 'metadata.children', label: 'Children', type: 'number', min: 0, max: 50, step: 1, value: model.metadata.children, required: true, inputmode: 'numeric' }),
        field({ path: 'metadata.adults', label: 'Adults', type: 'number', min: 1, max: 50, step: 1, value: model.metadata.adults, required: true, inputmode: 'numeric' }),
        field({ path: 'metadata.employed_adults', label: 'Adults with a job', type: 'number', min: 0, max: 50, step: 1, value: model.metadata.employed_adults, required: true, inputmode: 'numeric' }),
      ),
      h(
        'div',
        { class: 'checks' },
        field({ path: 'metadata.ev_charger', label: 'EV charger', type: 'checkbox', value: model.metadata.ev_charger }),
        field({ path: 'metadata.heat_pump', label: 'Heat pump', type: 'checkbox', value: model.metadata.heat_pump }),
        field({ path: 'metadata.home_battery', label: 'Home battery', type: 'checkbox', value: model.metadata.home_battery }),
      ),
    ]),
    section('Measurement devices', 'measurement_devices', [
      h('p', { class: 'hint' }, editing ? 'The headless devices installed in the household. Their certificates carry the participant’s email.' : 'The headless devices to install in the household; one is usual.'),
      lists.devices,
      h('button', { type: 'button', class: 'secondary', id: 'add-device', onclick: () => change((m) => m.measurement_devices.push({ ...newDevice(), name: '', scopes: [...SCOPES] })) }, 'Add a device'),
    ]),
    section('Meters', 'meters', [
      h('p', { class: 'hint' }, editing ? 'Electricity and generation meters, each read by one device through its probe. A new meter can be added, one listed by mistake removed; a meter with measurements stays, they are part of the data set.' : 'Electricity and generation meters, each read by one device through its probe.'),
      lists.meters,
      h('button', { type: 'button', class: 'secondary', id: 'add-meter', onclick: () => change((m) => m.meters.push({ type: 'PV-GENERATION', model: 'EHZ', measurement_device: 0 })) }, 'Add a meter'),
    ]),
    section('Photovoltaic systems', 'pv_systems', [
      h('p', { class: 'hint' }, editing ? 'Nominal power, orientation, installation date and the generation meter of each PV system. A forgotten PV system can be added, one listed by mistake removed.' : 'Nominal power, orientation, installation date and the generation meter of each PV system.'),
      lists.pv,
      h('button', { type: 'button', class: 'secondary', id: 'add-pv', onclick: () => change((m) => m.pv_systems.push({ nominal_power: '', azimuth: 180, tilt: 30, installation_date: '', generation_meter: '' })) }, 'Add a PV system'),
    ]),
    summary,
    saved,
    h('div', { class: 'actions' }, submit, editing ? h('a', { class: 'button secondary', href: '#/households' }, 'Back to the households') : null),
  );

  /** Re-reads the form, lets `edit` change the lists, and draws them again. */
  function change(edit) {
    const current = read(form, model, editing);
    edit(current);
    model = current;
    renderLists();
  }

  function renderLists() {
    fill(
      lists.devices,
      model.measurement_devices.map((device, i) =>
        row(`measurement_devices[${i}]`, `Device ${i + 1}`, model.measurement_devices.length === 1 ? null : () => change((m) => removeStored('measurement_devices', m, i, removeDevice)), [
          editing ? h('p', { class: 'uuid' }, device.added ? 'new, uuid ' : 'uuid ', h('code', {}, device.uuid)) : null,
          field({ path: `measurement_devices[${i}].name`, label: 'Name', value: device.name, maxlength: 200, hint: 'Where it is installed, e.g. “basement”.' }),
          h(
            'fieldset',
            { class: 'scopes', 'data-path': `measurement_devices[${i}].scopes` },
            h('legend', {}, 'Permissions'),
            SCOPES.map((scope) => field({ path: `measurement_devices[${i}].scopes.${scope}`, label: scope, type: 'checkbox', value: device.scopes.includes(scope) })),
            h('p', { class: 'field-error', id: `${idFor(`measurement_devices[${i}].scopes`)}-error`, hidden: true }),
          ),
        ]),
      ),
    );
    const deviceOptions = model.measurement_devices.map((d, i) => [i, deviceLabel(d, i)]);
    fill(
      lists.meters,
      model.meters.map((meter, i) =>
        row(`meters[${i}]`, `Meter ${i + 1}`, model.meters.length === 1 ? null : () => change((m) => removeStored('meters', m, i, removeMeter)), [
          editing ? h('p', { class: 'uuid' }, meter.uuid ? 'uuid ' : 'new: its uuid is assigned on saving', meter.uuid ? h('code', {}, meter.uuid) : null) : null,
          h(
            'div',
            { class: 'grid triple' },
            field({ path: `meters[${i}].type`, label: 'Type', options: METER_TYPES, value: meter.type }),
            field({ path: `meters[${i}].model`, label: 'Model', options: METER_MODELS, value: meter.model }),
            field({ path: `meters[${i}].measurement_device`, label: 'Read by', options: deviceOptions, value: meter.measurement_device }),
          ),
        ]),
      ),
    );
    const meterOptions = [['', 'none yet'], ...model.meters.map((m, i) => [i, meterLabel(m, i)])];
    fill(
      lists.pv,
      model.pv_systems.length === 0 ? h('p', { class: 'empty' }, 'No PV system.') : null,
      model.pv_systems.map((pv, i) =>
        row(`pv_systems[${i}]`, `PV system ${i + 1}`, () => change((m) => removePv(m, i)), [
          h(
            'div',
            { class: 'grid pv' },
            field({ path: `pv_systems[${i}].nominal_power`, label: 'Nominal power (kWp)', type: 'number', step: 'any', min: 0, max: 100000, value: pv.nominal_power, required: true, inputmode: 'decimal' }),
            field({ path: `pv_systems[${i}].azimuth`, label: 'Azimuth (°)', type: 'number', step: 'any', min: 0, max: 359.99, value: pv.azimuth, required: true, inputmode: 'decimal', hint: 'From north, clockwise: 180 is south.' }),
            field({ path: `pv_systems[${i}].tilt`, label: 'Tilt (°)', type: 'number', step: 'any', min: 0, max: 90, value: pv.tilt, required: true, inputmode: 'decimal', hint: '0 is flat.' }),
            field({ path: `pv_systems[${i}].installation_date`, label: 'Installation date', type: 'date', min: '1950-01-01', value: pv.installation_date, required: true }),
            field({ path: `pv_systems[${i}].generation_meter`, label: 'Generation meter', options: meterOptions, value: pv.generation_meter }),
          ),
        ]),
      ),
    );
  }

  // The choices naming meters and devices follow their type, model and name in place,
  // without drawing the lists again (which would take the focus from the select).
  form.addEventListener('change', (event) => {
    const path = event.target?.dataset?.path || '';
    if (!/^meters\[\d+\]\.(type|model)$/.test(path) && !/^measurement_devices\[\d+\]\.name$/.test(path)) return;
    const current = read(form, model, editing);
    for (const select of form.querySelectorAll('select[data-path$=".generation_meter"]')) {
      for (const option of select.options) {
        const meter = current.meters[Number(option.value)];
        if (option.value !== '' && meter) option.textContent = meterLabel(meter, Number(option.value));
      }
    }
    for (const select of form.querySelectorAll('select[data-path$=".measurement_device"]')) {
      for (const option of select.options) {
        const device = current.measurement_devices[Number(option.value)];
        if (device) option.textContent = deviceLabel(device, Number(option.value));
      }
    }
  });
  clearOnInput(form);
  control(form, 'address.country')?.addEventListener('input', (event) => {
    event.target.value = event.target.value.toUpperCase();
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    showMessage(saved, '');
    summary.hidden = true;
    model = read(form, model, editing);
    const problems = check(model);
    if (problems.length > 0) {
      report(problems, 'Please correct the marked fields');
      return;
    }
    submit.disabled = true;
    try {
      if (editing) {
        const answer = await api.correct(household.id, update(model, removed));
        household = answer;
        // New devices, meters and PV systems got their uuids, removed ones are gone.
        model = modelOf(answer);
        removed = noneRemoved();
        renderLists();
        page.querySelector('#facts')?.replaceWith(facts(household));
        showMessage(saved, `Saved at ${new Date().toLocaleTimeString()}.`);
        announce('Corrections saved');
      } else {
        const answer = await api.register(registration(model));
        flash = `Registered ${answer.user?.name || 'the participant'}. Issue the device certificate for ${answer.user?.email || 'the email'} and configure the reader with the meter uuids below.`;
        announce('Participant registered');
        go(`/households/${answer.id}`);
      }
    } catch (failure) {
      if (failure instanceof ApiError && failure.field) {
        report([{ field: failure.field, message: named(failure.message, model) }], 'The Data API refused the details');
      } else {
        report([{ field: null, message: describe(failure) }], editing ? 'The corrections were not saved' : 'The participant was not registered');
      }
    } finally {
      submit.disabled = false;
    }
  });

  /** Marks every problem at its field and lists them above the button. */
  function report(problems, heading) {
    let first = null;
    for (const { field: path, message } of problems) {
      const marked = path ? showError(form, path, message) : null;
      first ||= marked;
    }
    fill(
      summary,
      h('h2', {}, heading),
      h(
        'ul',
        { class: 'field-errors' },
        problems.map(({ field: path, message }) =>
          h('li', { dataset: { field: path || '' } }, path ? h('a', { href: `#${idFor(path)}`, onclick: (e) => focusField(e, path) }, label(form, path)) : null, path ? ': ' : null, message),
        ),
      ),
    );
    summary.hidden = false;
    announce(`${heading}: ${problems.length} ${problems.length === 1 ? 'problem' : 'problems'}`);
    const focusable = first && first.matches('input, select') ? first : first?.querySelector('input, select');
    (focusable || summary).focus();
  }

  function focusField(event, path) {
    // The hash belongs to the router.
    event.preventDefault();
    const element = control(form, path) || form.querySelector(`[data-path="${CSS.escape(path)}"] input, [data-path="${CSS.escape(path)}"] select`);
    element?.focus();
  }

  renderLists();
  const heading = pageHeading(editing ? household.user?.name || 'Anonymized household' : 'Register a participant');
  const notice = flash;
  flash = '';
  fill(
    page,
    h('div', { class: 'page-head' }, heading),
    notice ? h('p', { class: 'notice', role: 'status', id: 'registered' }, notice) : null,
    editing ? facts(household) : h('p', { class: 'hint' }, 'The registration form of section 3.1.2, as the participant filled it in. Fields marked * are required.'),
    anonymized
      ? [
          h('p', { class: 'notice', id: 'anonymized' }, 'The participant revoked consent: contact details and address were deleted, the location displaced and the PV systems normalized. The household can no longer be changed.'),
          remains(household),
        ]
      : h('section', { class: 'card' }, form),
  );
}

/** The household's id, consent and dates above the correction form. */
function facts(household) {
  const consent = household.consent;
  return h(
    'dl',
    { class: 'facts card', id: 'facts' },
    h('dt', {}, 'Household'),
    h('dd', {}, h('code', {}, household.id)),
    h('dt', {}, 'Consent'),
    h('dd', {}, h('span', { class: `consent consent-${consent.state.toLowerCase()}`, dataset: { state: consent.state } }, CONSENT_WORDS[consent.state] || consent.state), consent.granted_at ? [' since ', dateTime(consent.granted_at)] : null),
    h('dt', {}, 'Registered'),
    h('dd', {}, dateTime(household.created_at)),
    h('dt', {}, 'Last corrected'),
    h('dd', {}, dateTime(household.updated_at)),
  );
}

/** The Data API names meters and devices by uuid; the form calls them "Meter 2". */
function named(message, model) {
  let text = message;
  model.meters.forEach((meter, i) => {
    if (meter.uuid) text = text.replaceAll(meter.uuid, `meter ${i + 1} (${meter.type} ${meter.model})`);
  });
  model.measurement_devices.forEach((device, i) => {
    if (device.uuid) text = text.replaceAll(device.uuid, `device ${i + 1}`);
  });
  return text;
}

function meterLabel(meter, index) {
  return `Meter ${index + 1}: ${meter.type} ${meter.model}`;
}

function deviceLabel(device, index) {
  return device.name ? `Device ${index + 1}: ${device.name}` : `Device ${index + 1}`;
}

/** What an anonymized household keeps, read-only. */
function remains(household) {
  const m = household.metadata;
  const l = household.location;
  return h(
    'dl',
    { class: 'facts card', id: 'remains' },
    h('dt', {}, 'Displaced location'),
    h('dd', {}, l ? `${l.latitude.toFixed(5)}, ${l.longitude.toFixed(5)}` : '–'),
    h('dt', {}, 'Household'),
    h('dd', {}, m ? `${m.adults} adults (${m.employed_adults} with a job), ${m.children} children; ${[m.ev_charger && 'EV charger', m.heat_pump && 'heat pump', m.home_battery && 'home battery'].filter(Boolean).join(', ') || 'no EV charger, heat pump or home battery'}` : '–'),
    h('dt', {}, 'Meters'),
    h('dd', {}, household.meters.map((meter, i) => meterLabel(meter, i)).join('; ') || '–'),
    h('dt', {}, 'PV systems'),
    h('dd', {}, (household.pv_systems || []).map((pv) => `${pv.nominal_power} kWp, azimuth ${pv.azimuth}°, tilt ${pv.tilt}°, installed ${pv.installation_year}`).join('; ') || '–'),
  );
}

function section(title, path, children) {
  const id = `section-${path}`;
  return h(
    'fieldset',
    { class: 'section', 'data-path': path, 'aria-labelledby': id },
    h('legend', { id }, title),
    children,
    h('p', { class: 'field-error', id: `${idFor(path)}-error`, hidden: true }),
  );
}

function row(path, title, onRemove, children) {
  const id = `${idFor(path)}-title`;
  return h(
    'fieldset',
    { class: 'row', 'data-path': path, 'aria-labelledby': id },
    h(
      'div',
      { class: 'row-head' },
      h('legend', { id }, title),
      onRemove ? h('button', { type: 'button', class: 'secondary small remove', onclick: onRemove, 'aria-label': `Remove ${title.toLowerCase()}` }, 'Remove') : null,
    ),
    children,
    h('p', { class: 'field-error', id: `${idFor(path)}-error`, hidden: true }),
  );
}

function removeDevice(model, index) {
  model.measurement_devices.splice(index, 1);
  for (const meter of model.meters) {
    if (meter.measurement_device === index) meter.measurement_device = 0;
    else if (meter.measurement_device > index) meter.measurement_device -= 1;
  }
}

function removeMeter(model, index) {
  model.meters.splice(index, 1);
  for (const pv of model.pv_systems) {
    if (pv.generation_meter === index) pv.generation_meter = '';
    else if (pv.generation_meter !== '' && pv.generation_meter > index) pv.generation_meter -= 1;
  }
}

/** The label text of the field at `path`, for the error list. */
function label(form, path) {
  const input = control(form, path);
  const text = input ? form.querySelector(`label[for="${CSS.escape(input.id)}"]`)?.textContent : null;
  const group = form.querySelector(`[data-path="${CSS.escape(path)}"]`)?.closest('fieldset.row')?.querySelector('legend')?.textContent;
  const own = (text || path).replace(/\s*\*$/, '');
  return group && input ? `${group}: ${own}` : own;
}

/** The form's current values; numbers stay as typed (strings) until checked. */
function read(form, previous, editing) {
  const model = {
    user: { name: text(form, 'user.name'), email: text(form, 'user.email') },
    address: {
      street: text(form, 'address.street'),
      house_number: text(form, 'address.house_number'),
      postal_code: text(form, 'address.postal_code'),
      city: text(form, 'address.city'),
      country: text(form, 'address.country').toUpperCase(),
    },
    location: { latitude: number(form, 'location.latitude'), longitude: number(form, 'location.longitude') },
    metadata: {
      children: number(form, 'metadata.children'),
      adults: number(form, 'metadata.adults'),
      employed_adults: number(form, 'metadata.employed_adults'),
      ev_charger: checked(form, 'metadata.ev_charger'),
      heat_pump: checked(form, 'metadata.heat_pump'),
      home_battery: checked(form, 'metadata.home_battery'),
    },
    measurement_devices: previous.measurement_devices.map((device, i) => ({
      uuid: device.uuid,
      added: device.added,
      name: text(form, `measurement_devices[${i}].name`),
      scopes: SCOPES.filter((scope) => checked(form, `measurement_devices[${i}].scopes.${scope}`)),
    })),
    meters: previous.meters.map((meter, i) => ({
      uuid: meter.uuid,
      type: control(form, `meters[${i}].type`)?.value || meter.type,
      model: control(form, `meters[${i}].model`)?.value || meter.model,
      measurement_device: Number(control(form, `meters[${i}].measurement_device`)?.value || 0),
    })),
    pv_systems: previous.pv_systems.map((pv, i) => {
      const meter = control(form, `pv_systems[${i}].generation_meter`)?.value ?? '';
      return {
        uuid: pv.uuid,
        nominal_power: number(form, `pv_systems[${i}].nominal_power`),
        azimuth: number(form, `pv_systems[${i}].azimuth`),
        tilt: number(form, `pv_systems[${i}].tilt`),
        installation_date: text(form, `pv_systems[${i}].installation_date`),
        generation_meter: meter === '' ? '' : Number(meter),
      };
    }),
  };
  return model;
}

const EMAIL = /^[^\s@<>,"]+@[^\s@<>,"]+\.[^\s@<>,".]+$/;

/**
 * The Data API's rules for each field (validate.rs), checked before sending so that
 * mistakes show at once; the Data API checks them again and has the last word.
 */
export function check(model) {
  const problems = [];
  const problem = (field, message) => problems.push({ field, message });
  const textRule = (path, value, max) => {
    if (!value) problem(path, 'Required.');
    else if ([...value].length > max) problem(path, `At most ${max} characters.`);
  };
  textRule('user.name', model.user.name, 200);
  if (!model.user.email) problem('user.email', 'Required.');
  else if (!EMAIL.test(model.user.email) || model.user.email.includes('..')) problem('user.email', 'Not an email address, e.g. erika@example.org.');
  textRule('address.street', model.address.street, 200);
  textRule('address.house_number', model.address.house_number, 20);
  textRule('address.postal_code', model.address.postal_code, 20);
  textRule('address.city', model.address.city, 200);
  if (!/^[A-Z]{2}$/.test(model.address.country)) problem('address.country', 'Two letters (ISO 3166-1), e.g. DE.');
  range(problem, 'location.latitude', model.location.latitude, -90, 90, 'degrees');
  range(problem, 'location.longitude', model.location.longitude, -180, 180, 'degrees');
  for (const name of ['children', 'adults', 'employed_adults']) {
    const value = model.metadata[name];
    if (value === null) problem(`metadata.${name}`, 'Required.');
    else if (!Number.isInteger(value) || value < 0 || value > 50) problem(`metadata.${name}`, 'A whole number from 0 to 50.');
  }
  if (Number.isInteger(model.metadata.adults) && model.metadata.adults === 0) problem('metadata.adults', 'A household has at least one adult.');
  if (Number.isInteger(model.metadata.employed_adults) && Number.isInteger(model.metadata.adults) && model.metadata.employed_adults > model.metadata.adults) {
    problem('metadata.employed_adults', 'Cannot exceed the number of adults.');
  }
  model.measurement_devices.forEach((device, i) => {
    if (device.name.length > 200) problem(`measurement_devices[${i}].name`, 'At most 200 characters.');
    if (device.scopes.length === 0) problem(`measurement_devices[${i}].scopes`, 'A device needs at least one permission.');
  });
  if (model.meters.length === 0) problem('meters', 'Register at least one meter.');
  const latest = new Date();
  latest.setFullYear(latest.getFullYear() + 1);
  model.pv_systems.forEach((pv, i) => {
    const at = `pv_systems[${i}]`;
    if (pv.nominal_power === null) problem(`${at}.nominal_power`, 'Required.');
    else if (!(Number.isFinite(pv.nominal_power) && pv.nominal_power > 0 && pv.nominal_power <= 100000)) problem(`${at}.nominal_power`, 'A positive number of kWp (at most 100000).');
    if (pv.azimuth === null) problem(`${at}.azimuth`, 'Required.');
    else if (!(Number.isFinite(pv.azimuth) && pv.azimuth >= 0 && pv.azimuth < 360)) problem(`${at}.azimuth`, 'From 0 up to (not including) 360 degrees.');
    range(problem, `${at}.tilt`, pv.tilt, 0, 90, 'degrees');
    if (!pv.installation_date) problem(`${at}.installation_date`, 'Required.');
    else {
      const date = new Date(`${pv.installation_date}T00:00:00Z`);
      if (Number.isNaN(date.getTime()) || pv.installation_date < '1950-01-01' || date > latest) problem(`${at}.installation_date`, 'A date between 1950 and next year.');
    }
  });
  return problems;
}

function range(problem, path, value, min, max, unit) {
  if (value === null) problem(path, 'Required.');
  else if (!(Number.isFinite(value) && value >= min && value <= max)) problem(path, `From ${min} to ${max} ${unit}.`);
}

/** POST /management/household: devices, meters and PV systems refer to each other by index. */
function registration(model) {
  return {
    user: model.user,
    address: model.address,
    location: model.location,
    metadata: model.metadata,
    measurement_devices: model.measurement_devices.map((d) => ({ ...(d.name ? { name: d.name } : {}), scopes: d.scopes })),
    meters: model.meters.map((m) => ({ type: m.type, model: m.model, measurement_device: m.measurement_device })),
    pv_systems: model.pv_systems.map((p) => ({
      nominal_power: p.nominal_power,
      azimuth: p.azimuth,
      tilt: p.tilt,
      installation_date: p.installation_date,
      ...(p.generation_meter === '' ? {} : { generation_meter: p.generation_meter }),
    })),
  };
}

function noneRemoved() {
  return { measurement_devices: [], meters: [], pv_systems: [] };
}

/**
 * PATCH /management/household/{id}: every section, items by uuid in the form's order (so
 * the Data API's field paths match the form's); devices added here carry the uuid the
 * form gave them (`add`), meters and PV systems without uuid are added, the removed ones
 * follow at the end.
 */
function update(model, removed) {
  const meterUuid = (index) => model.meters[index]?.uuid;
  const gone = (list) => removed[list].map((uuid) => ({ uuid, remove: true }));
  return {
    user: model.user,
    address: model.address,
    location: model.location,
    metadata: model.metadata,
    measurement_devices: [
      ...model.measurement_devices.map((d) => ({ ...(d.added ? { add: true } : {}), uuid: d.uuid, name: d.name, scopes: d.scopes })),
      ...gone('measurement_devices'),
    ],
    meters: [
      ...model.meters.map((m) => ({
        ...(m.uuid ? { uuid: m.uuid } : {}),
        type: m.type,
        model: m.model,
        measurement_device: model.measurement_devices[m.measurement_device]?.uuid,
      })),
      ...gone('meters'),
    ],
    pv_systems: [
      ...model.pv_systems.map((p) => ({
        ...(p.uuid ? { uuid: p.uuid } : {}),
        nominal_power: p.nominal_power,
        azimuth: p.azimuth,
        tilt: p.tilt,
        installation_date: p.installation_date,
        ...(p.generation_meter === '' ? {} : { generation_meter: meterUuid(p.generation_meter) }),
      })),
      ...gone('pv_systems'),
    ],
  };
}
