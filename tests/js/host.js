// A host for unchanged pusher-js clients, driven by the Pusher protocol tests
// (tests/test_pusher_js.py): commands come on stdin, one JSON object per line,
// and everything the clients see goes to stdout, one JSON object per line.
//
//   {"op": "connect", "id": "a", "key": "...", "port": 7272, "auth": "http://.../auth", "user": "u1"}
//   {"op": "subscribe", "id": "a", "channel": "presence-room"}
//   {"op": "unsubscribe", "id": "a", "channel": "presence-room"}
//   {"op": "trigger", "id": "a", "channel": "private-x", "event": "client-hi", "data": {...}}
//   {"op": "disconnect", "id": "a"} / {"op": "reconnect", "id": "a"} / {"op": "exit"}
'use strict';
const readline = require('readline');
const Pusher = require('pusher-js');

const clients = {};

function out(doc) {
  process.stdout.write(JSON.stringify(doc) + '\n');
}

function connect(cmd) {
  const pusher = new Pusher(cmd.key, {
    wsHost: '127.0.0.1',
    wsPort: cmd.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
    activityTimeout: cmd.activityTimeout || 120000,
    channelAuthorization: {
      endpoint: cmd.auth || 'http://127.0.0.1:1/none',
      transport: 'ajax',
      params: { user: cmd.user || '' },
    },
  });
  clients[cmd.id] = pusher;
  pusher.connection.bind('state_change', (states) => {
    out({ id: cmd.id, type: 'state', current: states.current, socket_id: pusher.connection.socket_id || null });
  });
  pusher.connection.bind('error', (err) => {
    const data = err && err.error && err.error.data ? err.error.data : err && err.data ? err.data : null;
    out({ id: cmd.id, type: 'error', data: data });
  });
  pusher.bind_global((event, data) => {
    if (event.indexOf('pusher:') !== 0) out({ id: cmd.id, type: 'global', event: event, data: data });
  });
}

function subscribe(cmd) {
  const channel = clients[cmd.id].subscribe(cmd.channel);
  channel.bind('pusher:subscription_succeeded', (members) => {
    const doc = { id: cmd.id, type: 'subscribed', channel: cmd.channel };
    if (members && members.count !== undefined) {
      doc.count = members.count;
      doc.ids = Object.keys(members.members).sort();
      doc.me = members.me ? members.me.id : null;
    }
    out(doc);
  });
  channel.bind('pusher:subscription_error', (error) => {
    out({ id: cmd.id, type: 'subscription_error', channel: cmd.channel, error: error });
  });
  channel.bind('pusher:member_added', (member) => {
    out({ id: cmd.id, type: 'member_added', channel: cmd.channel, user_id: member.id, info: member.info, count: channel.members.count });
  });
  channel.bind('pusher:member_removed', (member) => {
    out({ id: cmd.id, type: 'member_removed', channel: cmd.channel, user_id: member.id, count: channel.members.count });
  });
  channel.bind_global((event, data, metadata) => {
    if (event.indexOf('pusher:') === 0) return;
    out({ id: cmd.id, type: 'event', channel: cmd.channel, event: event, data: data, user_id: metadata && metadata.user_id ? metadata.user_id : null });
  });
}

const ops = {
  connect: connect,
  subscribe: subscribe,
  unsubscribe: (cmd) => clients[cmd.id].unsubscribe(cmd.channel),
  trigger: (cmd) => out({ id: cmd.id, type: 'triggered', ok: clients[cmd.id].channel(cmd.channel).trigger(cmd.event, cmd.data) }),
  disconnect: (cmd) => clients[cmd.id].disconnect(),
  reconnect: (cmd) => clients[cmd.id].connect(),
  exit: () => {
    Object.values(clients).forEach((pusher) => pusher.disconnect());
    setTimeout(() => process.exit(0), 100);
  },
};

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  try {
    ops[cmd.op](cmd);
  } catch (err) {
    out({ id: cmd.id || null, type: 'host_error', op: cmd.op, error: String(err) });
  }
});
out({ type: 'ready' });
