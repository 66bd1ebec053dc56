// Nodes: this node's statistics (/v1/nodestatus) and every known node (/v1/nodes) with its
// liveness, lifecycle phase, last contact and capabilities.

import { api, describe, isAbort } from './api.js';
import { every, fill, h, pageHeading, showMessage } from './dom.js';
import { ago, bytes, duration, percent, phaseBadge, stateBadge } from './format.js';

export const title = 'Nodes';

const REFRESH_MS = 5000;

export function mount(main) {
  const status = h('dl', { class: 'stats', id: 'node-status' });
  const statusError = h('p', { class: 'error', role: 'alert', id: 'node-status-error', hidden: true });
  const rows = h('tbody', { id: 'node-rows' });
  const error = h('p', { class: 'error', role: 'alert', id: 'nodes-error', hidden: true });

  const poll = every(REFRESH_MS, async (signal) => {
    const [nodes, capabilities, nodeStatus] = await Promise.allSettled([
      api.nodes(signal),
      api.capabilities(signal),
      api.nodeStatus(signal),
    ]);
    if ([nodes, capabilities, nodeStatus].some((r) => r.status === 'rejected' && isAbort(r.reason))) {
      return;
    }
    if (nodes.status === 'fulfilled') {
      showMessage(error, '');
      const own = capabilities.status === 'fulfilled' ? capabilities.value : null;
      fill(rows, nodes.value.map((node) => nodeRow(node, own)));
    } else {
      showMessage(error, `Cannot load the nodes: ${describe(nodes.reason)}`);
    }
    if (nodeStatus.status === 'fulfilled') {
      showMessage(statusError, '');
      fill(status, statistics(nodeStatus.value));
    } else {
      showMessage(statusError, `No statistics of this node: ${describe(nodeStatus.reason)}`);
    }
  });

  main.append(
    h(
      'section',
      { class: 'page' },
      h('div', { class: 'page-head' }, pageHeading('Nodes')),
      h(
        'section',
        { class: 'card', 'aria-labelledby': 'this-node-title' },
        h('h2', { id: 'this-node-title' }, 'This node'),
        statusError,
        status,
      ),
      h(
        'section',
        { 'aria-labelledby': 'all-nodes-title' },
        h('h2', { id: 'all-nodes-title' }, 'All nodes'),
        error,
        h(
          'div',
          { class: 'table-wrap' },
          h(
            'table',
            { class: 'nodes', id: 'node-table' },
            h(
              'thead',
              {},
              h(
                'tr',
                {},
                ['Node', 'State', 'Last seen', 'Addresses', 'Capabilities'].map((heading) =>
                  h('th', { scope: 'col' }, heading),
                ),
              ),
            ),
            rows,
          ),
        ),
      ),
    ),
  );
  return () => poll.stop();
}

function nodeRow(node, ownCapabilities) {
  const capabilities = node.this_node ? ownCapabilities : node.capabilities;
  return h(
    'tr',
    { dataset: { nodeId: node.id, state: node.state }, class: node.this_node ? 'this-node' : null },
    h(
      'td',
      { dataset: { label: 'Node' } },
      h('strong', { class: 'peer-name' }, node.name || node.id),
      node.this_node ? h('span', { class: 'tag' }, 'this node') : null,
      h('br'),
      h('code', { class: 'node-id' }, node.id),
      node.version ? h('span', { class: 'version' }, ` motey ${node.version}`) : null,
    ),
    h('td', { dataset: { label: 'State' } }, stateBadge(node.state), phaseBadge(node.phase, node.phase_reason, !node.this_node && node.state !== 'alive')),
    h(
      'td',
      { dataset: { label: 'Last seen' } },
      node.this_node ? 'now' : ago(node.last_seen) || h('em', {}, 'never'),
    ),
    h(
      'td',
      { dataset: { label: 'Addresses' } },
      (node.addresses || []).map((address) => h('code', { class: 'address' }, `${address}:${node.rest_port}`)),
    ),
    h('td', { dataset: { label: 'Capabilities' } }, capabilityList(capabilities)),
  );
}

/** Capabilities as `[{capability, capability_type}]` or as plain names. */
function capabilityList(capabilities) {
  if (!Array.isArray(capabilities)) return h('em', {}, 'not known');
  if (capabilities.length === 0) return h('em', {}, 'none');
  return h(
    'ul',
    { class: 'tags' },
    capabilities.map((capability) =>
      typeof capability === 'string'
        ? h('li', { class: 'tag' }, capability)
        : h(
            'li',
            { class: 'tag', title: capability.capability_type },
            `${capability.capability} (${capability.capability_type})`,
          ),
    ),
  );
}

function statistics(s) {
  const memoryShare = s.memory_total_bytes ? (100 * s.memory_used_bytes) / s.memory_total_bytes : NaN;
  const diskUsed = s.disk_total_bytes - s.disk_available_bytes;
  const diskShare = s.disk_total_bytes ? (100 * diskUsed) / s.disk_total_bytes : NaN;
  const item = (label, key, ...value) =>
    h('div', { dataset: { stat: key } }, h('dt', {}, label), h('dd', {}, ...value));
  const gauge = (label, share) =>
    h('meter', { min: '0', max: '100', low: '70', high: '90', optimum: '0', value: String(share || 0), 'aria-label': label });
  return [
    item('Name', 'name', s.node_name || s.node_id),
    item('Id', 'id', h('code', {}, s.node_id)),
    item('CPU', 'cpu', gauge('CPU busy', s.cpu_percent), ` ${percent(s.cpu_percent)} of ${s.cpu_count} cores`),
    item('Load', 'load', (s.load_average || []).map((l) => l.toFixed(2)).join(' · ')),
    item(
      'Memory',
      'memory',
      gauge('Memory used', memoryShare),
      ` ${bytes(s.memory_used_bytes)} of ${bytes(s.memory_total_bytes)}`,
    ),
    item('Disk', 'disk', gauge('Disk used', diskShare), ` ${bytes(s.disk_available_bytes)} free of ${bytes(s.disk_total_bytes)}`),
    item('Uptime', 'uptime', duration(s.uptime_secs)),
    item('Engine', 'engine', `${s.engine}${s.engine_version ? ` ${s.engine_version}` : ' (not reachable)'}`),
    item('Agent', 'version', `motey ${s.version}`),
    item('Phase', 'phase', phaseBadge(s.phase, s.phase_reason)),
  ];
}
