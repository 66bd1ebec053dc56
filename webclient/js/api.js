// The agent's REST API (/v1) as the pages use it. The API token lives in sessionStorage:
// it is gone when the tab closes, and no other site can read it.

const TOKEN_KEY = 'motey.api-token';
const ADMIN_TOKEN_KEY = 'motey.admin-token';

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
    sessionStorage.removeItem(ADMIN_TOKEN_KEY);
  },
  /** Device access (logs) needs the admin token; an admin may sign in with either. */
  adminToken() {
    return sessionStorage.getItem(ADMIN_TOKEN_KEY) || sessionStorage.getItem(TOKEN_KEY);
  },
  setAdminToken(token) {
    sessionStorage.setItem(ADMIN_TOKEN_KEY, token);
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
  update: (id, yaml) =>
    request('PUT', `/v1/services/${encodeURIComponent(id)}`, {
      body: yaml,
      contentType: 'application/x-yaml',
    }),
  history: (id, signal) =>
    request('GET', `/v1/services/${encodeURIComponent(id)}/history`, { signal }),
  /** The log of an image as a streamed response (text lines; with `follow`, endless). */
  async logs(id, image, { tail, follow, signal }) {
    const path =
      `/v1/services/${encodeURIComponent(id)}/images/${encodeURIComponent(image)}/logs` +
      `?tail=${encodeURIComponent(tail)}&follow=${follow ? 'true' : 'false'}`;
    const headers = { Accept: 'text/plain' };
    const token = session.adminToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, { headers, signal, cache: 'no-store' });
    } catch (error) {
      if (isAbort(error)) throw error;
      throw new NetworkError(error);
    }
    if (!response.ok) {
      throw new ApiError(response.status, await response.json().catch(() => null));
    }
    return response;
  },
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
