// Sign-in with the agent's API token. The token is checked against the agent before it
// is kept, so a typo is reported here and not on the first deployment.

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
      async onsubmit(event) {
        event.preventDefault();
        const token = input.value.trim();
        if (!token) {
          showMessage(error, 'Enter the API token.');
          input.setAttribute('aria-invalid', 'true');
          input.focus();
          return;
        }
        button.disabled = true;
        showMessage(error, '');
        try {
          await api.verifyToken(token);
          if (!active) return;
          session.signIn(token);
          onSignedIn();
        } catch (failure) {
          if (!active) return;
          const refused = failure instanceof ApiError && failure.status === 401;
          showMessage(
            error,
            refused
              ? 'The agent refused this token. Check [WEBSERVER] token in its configuration or the api-token file in its data directory.'
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
    // Lets password managers file the token under this agent.
    h('input', {
      type: 'text',
      name: 'username',
      autocomplete: 'username',
      value: 'motey',
      hidden: true,
      readonly: true,
    }),
    h('div', { class: 'field' }, h('label', { for: 'token' }, 'API token'), input),
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
        'Use this agent’s API token: ',
        h('code', {}, '[WEBSERVER] token'),
        ' in its configuration, or the file ',
        h('code', {}, 'api-token'),
        ' in its data directory.',
      ),
      form,
    ),
  );
  return () => {
    active = false;
  };
}
