// Sign-in with the researcher or the admin token. The token is checked with the Data API
// (GET /management/session) before it is kept, so a typo is reported here.

import { ApiError, api, describe, session } from './api.js';
import { h, pageHeading, showMessage } from './dom.js';

export const title = 'Sign in';

export function mount(main, { notice, onSignedIn }) {
  const input = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    autocomplete: 'current-password',
    spellcheck: 'false',
    required: true,
    'aria-describedby': 'token-hint signin-error',
  });
  const error = h('p', { id: 'signin-error', class: 'error', role: 'alert', hidden: true });
  const button = h('button', { type: 'submit', id: 'sign-in' }, 'Sign in');
  let active = true;

  const form = h(
    'form',
    {
      id: 'signin-form',
      class: 'stack',
      novalidate: true,
      async onsubmit(event) {
        event.preventDefault();
        const token = input.value.trim();
        if (!token) {
          showMessage(error, 'Enter the researcher or administrator token.');
          input.setAttribute('aria-invalid', 'true');
          input.focus();
          return;
        }
        button.disabled = true;
        showMessage(error, '');
        try {
          const answer = await api.session(token);
          if (!active) return;
          session.signIn(token);
          onSignedIn(answer);
        } catch (failure) {
          if (!active) return;
          const refused = failure instanceof ApiError && failure.status === 401;
          showMessage(
            error,
            refused
              ? 'The Data API refused this token. Use the researcher or the administrator token of this survey.'
              : `Cannot sign in: ${describe(failure)}`,
          );
          input.setAttribute('aria-invalid', 'true');
          input.select();
          input.focus();
        } finally {
          button.disabled = false;
        }
      },
    },
    // Lets password managers file the token under this Data API.
    h('input', {
      type: 'text',
      name: 'username',
      autocomplete: 'username',
      value: 'energiebroker-survey',
      hidden: true,
      readonly: true,
    }),
    h('div', { class: 'field' }, h('label', { for: 'token' }, 'Token'), input),
    error,
    h('div', { class: 'actions' }, button),
  );
  input.addEventListener('input', () => input.removeAttribute('aria-invalid'));

  main.append(
    h(
      'section',
      { class: 'card signin', 'aria-labelledby': 'signin-title' },
      Object.assign(pageHeading('Sign in'), { id: 'signin-title' }),
      notice ? h('p', { class: 'notice', role: 'status' }, notice) : null,
      h(
        'p',
        { id: 'token-hint', class: 'hint' },
        'Researchers register participants and correct their details; administrators see the health of the measurement devices. Use your role’s token: ',
        h('code', {}, 'researcher.token'),
        ' or ',
        h('code', {}, 'admin.token'),
        ' in the Data API’s PKI directory, or the value of ',
        h('code', {}, 'DATA_API_RESEARCHER_TOKEN'),
        ' / ',
        h('code', {}, 'DATA_API_ADMIN_TOKEN'),
        '.',
      ),
      form,
    ),
  );
  return () => {
    active = false;
  };
}
