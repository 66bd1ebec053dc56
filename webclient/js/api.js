// The agent's REST API (/v1) as the pages use it. The API token lives in sessionStorage:
// it is gone when the tab closes, and no other site can read it.

const TOKEN_KEY = 'motey.api-token';

/** A refusal of the API, with the fields it names (`{error, message, field, fields}`). */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `the agent answered ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = body?.error || 'unknown';
    this.field = body?.field || null;
    this.fields = Array.isArray(body?.fields) ? body.fields : [];
    if (this.fields.length === 0 && this.field) {
      this.fields = [{ field: this.field, message: this.message }];
    }
  }
}

/** The agent could not be reached at all. */
export class NetworkError extends Error {
  constructor(cause) {
    super('the agent cannot be reached; is it running?');
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

/** Calls `listener` when the agent refuses the stored token (it was changed, say). */
export function onTokenRefused(listener) {
  refusedListeners.add(listener);
  return () => refusedListeners.delete(listener);
}

export function isAbort(error) {
  return error?.name === 'AbortError';
}

async function request(method, path, { body, contentType, signal, token = session.token() } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (contentType) headers['Content-Type'] = contentType;
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, cache: 'no-store' });
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

const json = (value) => JSON.stringify(value);

export const api = {
  /**
   * Whether the agent accepts `token`. Reads may be open to anyone, so this asks for a
   * mutation that changes nothing: removing an empty list of capabilities.
   */
  async verifyToken(token) {
    await request('DELETE', '/v1/capabilities', {
      body: '[]',
      contentType: 'application/json',
      token,
    });
  },
  services: (signal) => request('GET', '/v1/services', { signal }),
  service: (id, signal) => request('GET', `/v1/services/${encodeURIComponent(id)}`, { signal }),
  deploy: (yaml) =>
    request('POST', '/v1/services', { body: yaml, contentType: 'application/x-yaml' }),
  terminate: (id) => request('DELETE', `/v1/services/${encodeURIComponent(id)}`),
  nodes: (signal) => request('GET', '/v1/nodes', { signal }),
  nodeStatus: (signal) => request('GET', '/v1/nodestatus', { signal }),
  capabilities: (signal) => request('GET', '/v1/capabilities', { signal }),
  addCapability: (capability) =>
    request('PUT', '/v1/capabilities', {
      body: json([capability]),
      contentType: 'application/json',
    }),
  removeCapability: (capability) =>
    request('DELETE', '/v1/capabilities', {
      body: json([capability]),
      contentType: 'application/json',
    }),
};

/** A message for people from any error a call may throw. */
export function describe(error) {
  if (error instanceof ApiError || error instanceof NetworkError) return error.message;
  return `unexpected failure: ${error?.message || error}`;
}
