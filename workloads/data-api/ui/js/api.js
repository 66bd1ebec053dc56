// The Data API's /management endpoints as the pages use them. The researcher or admin
// token lives in sessionStorage: it is gone when the tab closes, and no other site can
// read it.

const TOKEN_KEY = 'energiebroker.management-token';

/** A refusal of the Data API (`{error, message, field}`). */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `the Data API answered ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = body?.error || 'unknown';
    this.field = body?.field || null;
  }
}

/** The Data API could not be reached at all. */
export class NetworkError extends Error {
  constructor(cause) {
    super('the Data API cannot be reached; is it running?');
    this.name = 'NetworkError';
    this.cause = cause;
  }
}

export const session = {
  token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

const refusedListeners = new Set();

/** Calls `listener` when the Data API refuses the stored token (it was rotated, say). */
export function onTokenRefused(listener) {
  refusedListeners.add(listener);
  return () => refusedListeners.delete(listener);
}

export function isAbort(error) {
  return error?.name === 'AbortError';
}

async function request(method, path, { body, signal, token = session.token() } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new NetworkError(error);
  }
  const isJson = (response.headers.get('Content-Type') || '').includes('json');
  const payload = isJson ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const error = new ApiError(response.status, payload);
    if (response.status === 401 && token && token === session.token()) {
      for (const listener of refusedListeners) listener(error);
    }
    throw error;
  }
  return payload;
}

const household = (id) => `/management/household/${encodeURIComponent(id)}`;

export const api = {
  /** The role of `token` and the report cycle; a 401 if the Data API does not know it. */
  session: (token, signal) => request('GET', '/management/session', { token, signal }),
  households: (signal) => request('GET', '/management/household', { signal }),
  household: (id, signal) => request('GET', household(id), { signal }),
  register: (registration) => request('POST', '/management/household', { body: registration }),
  correct: (id, update) => request('PATCH', household(id), { body: update }),
};

/** A message for people from any error a call may throw. */
export function describe(error) {
  if (error instanceof ApiError || error instanceof NetworkError) return error.message;
  return `unexpected failure: ${error?.message || error}`;
}
