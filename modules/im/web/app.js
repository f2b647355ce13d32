// Colony chat: a demo client of the im module (modules/im/README.md) in
// plain browser JavaScript on MQTT.js. Requests go to $rpc/im/<handler> as
// MQTT 5 request/response; deliveries arrive on im/u/<me>/<kind>.
'use strict';

const $ = (sel) => document.querySelector(sel);

const st = {
  cfg: null,          // GET /connect.json: {node, ws, passwords}
  client: null,       // the MQTT.js client
  clientId: '',
  user: '',           // the user id asked for at login
  me: '',             // the user id the server gave us
  corr: 0,
  pending: new Map(), // correlation -> {resolve, reject, timer}
  convs: new Map(),   // conversation id -> conversation, as the server shows it to me
  entries: new Map(), // conversation id -> Map(seq -> message)
  last: {},           // conversation id -> highest seq this page has (for sync)
  members: new Map(), // conversation id -> Map(user -> member with positions)
  presence: new Map(),// user -> {online, last_seen}
  typing: new Map(),  // conversation id -> Map(user -> until, ms)
  open: '',           // the conversation shown
  typingSent: 0,      // when we last said we type
  typingStop: null,   // timer that says we stopped
  acks: new Map(),    // conversation id -> pending ack timer
};

const CALL_TIMEOUT = 20000;
const TYPING_SHOWN = 6000;

// ---- MQTT and request/response ----

function call(handler, req) {
  const corr = String(++st.corr);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      st.pending.delete(corr);
      reject(new Error(`${handler}: no reply`));
    }, CALL_TIMEOUT);
    st.pending.set(corr, { resolve, reject, timer });
    // A string is written as UTF-8 bytes, which is what correlation data is.
    st.client.publish(`$rpc/im/${handler}`, JSON.stringify(req || {}), {
      qos: 1, properties: { responseTopic: replyTopic(), correlationData: corr },
    }, (err) => {
      if (err) {
        clearTimeout(timer);
        st.pending.delete(corr);
        reject(err);
      }
    });
  });
}

function replyTopic() { return `replies/${st.clientId}`; }

function rpcError(e) {
  const err = new Error(e.message || e.code);
  err.code = e.code;
  return err;
}

function onMessage(topic, payload, packet) {
  let body;
  try {
    body = JSON.parse(new TextDecoder().decode(payload));
  } catch (e) {
    console.warn('not JSON on', topic);
    return;
  }
  if (topic === replyTopic()) {
    const cd = packet.properties && packet.properties.correlationData;
    const corr = cd ? new TextDecoder().decode(cd) : '';
    const p = st.pending.get(corr);
    if (!p) return;
    st.pending.delete(corr);
    clearTimeout(p.timer);
    if (body.error) p.reject(rpcError(body.error));
    else p.resolve(body.result);
    return;
  }
  const parts = topic.split('/'); // im/u/<uid>/<kind>
  switch (parts[3]) {
    case 'msg': onEntry(body, true); break;
    case 'receipt': onReceipts(body); break;
    case 'typing': onTyping(body); break;
    case 'presence': onPresence(body); break;
    case 'conv': onConvEvent(body); break;
  }
}

// ---- login ----

async function init() {
  const params = new URLSearchParams(location.search);
  try {
    const r = await fetch('/connect.json', { cache: 'no-store' });
    st.cfg = await r.json();
  } catch (e) {
    st.cfg = { ws: '', passwords: false };
  }
  if (params.get('ws')) st.cfg.ws = params.get('ws'); // behind a proxy, say where MQTT is
  $('#password-row').hidden = !st.cfg.passwords;
  $('#login-hint').textContent = !st.cfg.ws
    ? 'This node has no WebSocket listener (listeners.ws).'
    : st.cfg.passwords
      ? 'This node checks passwords (auth.password_file, colony passwd).'
      : 'This node trusts local clients: pick any user id.';
  if (params.get('user')) $('#user').value = params.get('user');
  $('#login-form').addEventListener('submit', (e) => { e.preventDefault(); login(); });
  $('#logout').addEventListener('click', logout);
  $('#new-direct-form').addEventListener('submit', (e) => { e.preventDefault(); newDirect(); });
  $('#new-group-form').addEventListener('submit', (e) => { e.preventDefault(); newGroup(); });
  $('#invite-form').addEventListener('submit', (e) => { e.preventDefault(); invite(); });
  $('#composer-form').addEventListener('submit', (e) => { e.preventDefault(); send(); });
  $('#composer').addEventListener('input', typing);
  $('#older').addEventListener('click', older);
  document.addEventListener('visibilitychange', () => { if (st.open) scheduleAck(st.open); });
  setInterval(renderHead, 1000); // typing indicators fade, last seen ages
}

function login() {
  const user = $('#user').value.trim();
  if (!user || !st.cfg.ws) return;
  $('#login-error').textContent = '';
  $('#login-go').disabled = true;
  st.user = user;
  st.clientId = `web-${Math.random().toString(36).slice(2, 12)}`;
  const opts = {
    protocolVersion: 5, clientId: st.clientId, clean: true,
    reconnectPeriod: 2000, connectTimeout: 10000,
    resubscribe: false, // we subscribe again after logging in again
  };
  if (st.cfg.passwords) {
    opts.username = user;
    opts.password = $('#password').value;
  }
  let connected = false;
  const c = mqtt.connect(st.cfg.ws, opts);
  st.client = c;
  c.on('message', onMessage);
  c.on('connect', () => {
    connected = true;
    setConn('connecting');
    start().catch((err) => fail(err));
  });
  c.on('close', () => setConn('offline'));
  c.on('error', (err) => {
    if (!connected) { // wrong password, server gone: back to the form
      c.end(true);
      $('#login-error').textContent = `Cannot connect: ${err.message}`;
      $('#login-go').disabled = false;
    }
  });
}

// start runs on every (re)connect: who am I, subscribe, catch up.
async function start() {
  await st.client.subscribeAsync(replyTopic(), { qos: 1 });
  const me = st.cfg.passwords ? await call('me') : await call('login', { user: st.user });
  st.me = me.user;
  const granted = await st.client.subscribeAsync(me.topic, { qos: 1 });
  if (!granted.length || granted[0].qos > 2) throw new Error(`subscribe ${me.topic} refused`);
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#me').textContent = st.me;
  document.title = `${st.me} · Colony chat`;
  setConn('online');
  await syncAll();
  await refreshPresence();
  if (st.open) await loadMembers(st.open);
  renderAll();
}

function fail(err) {
  console.error(err);
  if ($('#app').hidden) {
    $('#login-error').textContent = err.message;
    $('#login-go').disabled = false;
    if (st.client) st.client.end(true);
  } else {
    showError(err);
  }
}

function logout() {
  if (st.client) st.client.end(true, () => location.reload());
  else location.reload();
}

function setConn(state) {
  const el = $('#conn');
  el.dataset.state = state;
  el.textContent = state;
}

// ---- sync, entries, receipts ----

async function syncAll() {
  for (;;) {
    const r = await call('sync', { since: st.last });
    let more = false;
    for (const cs of r.conversations || []) {
      st.convs.set(cs.conversation.id, cs.conversation);
      for (const e of cs.messages || []) onEntry(e, false);
      more = more || cs.more;
    }
    if (!more) break;
  }
  for (const c of st.convs.values()) {
    if (c.last_seq > c.delivered_seq) scheduleAck(c.id);
  }
}

function onEntry(e, live) {
  let m = st.entries.get(e.conv);
  if (!m) { m = new Map(); st.entries.set(e.conv, m); }
  if (e.type === 'msg') {
    m.set(e.seq, Object.assign(m.get(e.seq) || {}, e));
  } else if (e.type === 'edit' || e.type === 'revoke') {
    const t = m.get(e.ref);
    if (t && e.type === 'edit') Object.assign(t, { text: e.text, data: e.data, bin: e.bin, edited_ts: e.ts });
    if (t && e.type === 'revoke') { t.revoked = true; delete t.text; delete t.data; delete t.bin; }
  }
  st.last[e.conv] = Math.max(st.last[e.conv] || 0, e.seq);
  const c = st.convs.get(e.conv);
  if (!c) {
    if (live) refreshConv(e.conv);
    return;
  }
  c.last_seq = Math.max(c.last_seq, e.seq);
  c.last_ts = Math.max(c.last_ts, e.ts);
  if (e.from === st.me) { // sending moves my own positions
    c.read_seq = Math.max(c.read_seq, e.seq);
    c.delivered_seq = Math.max(c.delivered_seq, e.seq);
    setPosition(e.conv, st.me, e.seq, e.seq);
  } else if (e.type === 'msg') {
    clearTyping(e.conv, e.from); // they sent what they typed
  }
  if (live) {
    if (e.from !== st.me) scheduleAck(e.conv);
    renderList();
    if (e.conv === st.open) renderMessages(true);
  }
}

// scheduleAck tells the server, shortly, that this device has the
// conversation's entries (delivered) and, when it is on screen, that the
// user has seen them (read). Acks close together become one call.
function scheduleAck(id) {
  if (st.acks.has(id)) return;
  st.acks.set(id, setTimeout(() => {
    st.acks.delete(id);
    ack(id).catch(showError);
  }, 150));
}

async function ack(id) {
  const c = st.convs.get(id);
  if (!c) return;
  const seq = c.last_seq;
  const visible = id === st.open && document.visibilityState === 'visible';
  let pos;
  if (visible && c.read_seq < seq) pos = await call('read', { conv: id, seq });
  else if (c.delivered_seq < seq) pos = await call('delivered', { conv: id, seq });
  if (pos) applyPosition(pos);
}

function onReceipts(ev) {
  for (const r of ev.receipts || []) applyPosition(r);
}

function applyPosition(r) {
  setPosition(r.conv, r.user, r.read_seq, r.delivered_seq);
  const c = st.convs.get(r.conv);
  if (c && r.user === st.me) { // another device of mine, or my own ack
    c.read_seq = Math.max(c.read_seq, r.read_seq);
    c.delivered_seq = Math.max(c.delivered_seq, r.delivered_seq);
    renderList();
  }
  if (r.conv === st.open) renderMessages(false);
}

function setPosition(conv, user, read, delivered) {
  const ms = st.members.get(conv);
  if (!ms) return;
  const m = ms.get(user) || { user, read_seq: 0, delivered_seq: 0 };
  m.read_seq = Math.max(m.read_seq || 0, read);
  m.delivered_seq = Math.max(m.delivered_seq || 0, delivered);
  ms.set(user, m);
}

async function loadMembers(id) {
  const r = await call('members', { conv: id });
  const ms = new Map();
  for (const m of r.members || []) ms.set(m.user, m);
  st.members.set(id, ms);
}

async function refreshConv(id) {
  try {
    const c = await call('get', { conv: id });
    st.convs.set(id, c);
    if (c.last_seq > (st.last[id] || 0)) await syncAll();
    if (c.kind === 'direct') await refreshPresence([c.peer]);
    renderList();
  } catch (e) {
    if (e.code !== 'forbidden') showError(e);
  }
}

function onConvEvent(ev) {
  const gone = (ev.type === 'left' || ev.type === 'kicked') && ev.user === st.me;
  if (gone) {
    st.convs.delete(ev.conv);
    if (st.open === ev.conv) { st.open = ''; renderAll(); }
    renderList();
    return;
  }
  if (ev.type === 'deleted_for_me') {
    const m = st.entries.get(ev.conv);
    for (const s of ev.seqs || []) if (m) m.delete(s);
    if (ev.conv === st.open) renderMessages(false);
    return;
  }
  refreshConv(ev.conv);
  if (ev.conv === st.open && ev.type !== 'muted') loadMembers(ev.conv).then(renderAll, showError);
}

// ---- presence and typing ----

async function refreshPresence(users) {
  if (!users) {
    const set = new Set();
    for (const c of st.convs.values()) if (c.kind === 'direct') set.add(c.peer);
    const ms = st.members.get(st.open);
    if (ms) for (const u of ms.keys()) set.add(u);
    set.delete(st.me);
    users = [...set].slice(0, 1000);
  }
  if (!users.length) return;
  const r = await call('presence', { users });
  for (const p of r.users || []) st.presence.set(p.user, p);
  renderList();
  renderHead();
}

function onPresence(p) {
  st.presence.set(p.user, p);
  renderList();
  renderHead();
}

function onTyping(t) {
  let m = st.typing.get(t.conv);
  if (!m) { m = new Map(); st.typing.set(t.conv, m); }
  if (t.typing) m.set(t.user, Date.now() + TYPING_SHOWN);
  else m.delete(t.user);
  if (t.conv === st.open) renderHead();
}

function clearTyping(conv, user) {
  const m = st.typing.get(conv);
  if (m) m.delete(user);
}

function typersOf(conv) {
  const m = st.typing.get(conv);
  if (!m) return [];
  const now = Date.now();
  return [...m].filter(([, until]) => until > now).map(([u]) => u);
}

// typing runs on each keystroke: say so at most every 3 s, and that we
// stopped after 4 s without one.
function typing() {
  if (!st.open) return;
  const conv = st.open;
  const now = Date.now();
  if (now - st.typingSent > 3000) {
    st.typingSent = now;
    call('typing', { conv, typing: true }).catch(() => {});
  }
  clearTimeout(st.typingStop);
  st.typingStop = setTimeout(() => stopTyping(conv), 4000);
}

function stopTyping(conv) {
  clearTimeout(st.typingStop);
  if (!st.typingSent) return;
  st.typingSent = 0;
  call('typing', { conv, typing: false }).catch(() => {});
}

// ---- actions ----

async function openConv(id) {
  if (st.open && st.open !== id) stopTyping(st.open);
  st.open = id;
  $('#chat-error').textContent = '';
  renderAll();
  try {
    await loadMembers(id);
    await refreshPresence();
    renderAll();
    scheduleAck(id);
  } catch (e) {
    showError(e);
  }
  $('#composer').focus();
}

async function newDirect() {
  const user = $('#new-direct').value.trim();
  if (!user) return;
  try {
    const c = await call('direct', { user });
    st.convs.set(c.id, c);
    $('#new-direct').value = '';
    await openConv(c.id);
  } catch (e) {
    showError(e);
  }
}

async function newGroup() {
  const title = $('#new-group-title').value.trim();
  const members = $('#new-group-members').value.split(/[\s,]+/).filter(Boolean);
  if (!title) return;
  try {
    const c = await call('create', { kind: 'group', title, members });
    st.convs.set(c.id, c);
    $('#new-group-title').value = '';
    $('#new-group-members').value = '';
    await openConv(c.id);
  } catch (e) {
    showError(e);
  }
}

async function invite() {
  const user = $('#invite').value.trim();
  if (!user || !st.open) return;
  try {
    const c = await call('invite', { conv: st.open, users: [user] });
    st.convs.set(c.id, c);
    $('#invite').value = '';
    await loadMembers(c.id);
    renderAll();
  } catch (e) {
    showError(e);
  }
}

async function send() {
  const input = $('#composer');
  const text = input.value.trim();
  const conv = st.open;
  if (!text || !conv) return;
  input.value = '';
  stopTyping(conv);
  // The same client_id on a retry: the server stores the message once.
  const req = { conv, client_id: `${st.clientId}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`, text };
  for (let attempt = 0; ; attempt++) {
    try {
      const m = await call('send', req);
      onEntry(m, true);
      $('#chat-error').textContent = '';
      return;
    } catch (e) {
      if (e.code || attempt >= 2) { // refused (rate limit, blocked, …): no retry
        showError(e);
        if (!input.value) input.value = text;
        return;
      }
    }
  }
}

async function older() {
  const m = st.entries.get(st.open);
  if (!m || !m.size) return;
  const before = Math.min(...m.keys());
  try {
    const r = await call('history', { conv: st.open, before, limit: 50 });
    const box = $('#messages');
    const h = box.scrollHeight;
    for (const e of r.messages || []) onEntry(e, false);
    renderMessages(false);
    box.scrollTop = box.scrollHeight - h;
  } catch (e) {
    showError(e);
  }
}

function showError(e) {
  console.warn(e);
  $('#chat-error').textContent = e.code ? `${e.code}: ${e.message}` : String(e.message || e);
}

// ---- rendering (textContent only: user data is never HTML) ----

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function convName(c) {
  return c.kind === 'direct' ? c.peer : (c.title || c.id);
}

function renderAll() {
  renderList();
  renderHead();
  renderMessages(true);
}

function renderList() {
  const ul = $('#convs');
  const convs = [...st.convs.values()].sort((a, b) => (b.last_ts || b.created_at) - (a.last_ts || a.created_at));
  ul.replaceChildren(...convs.map((c) => {
    const li = el('li', 'conv' + (c.id === st.open ? ' open' : ''));
    li.dataset.conv = c.id;
    li.dataset.kind = c.kind;
    const dot = el('span', 'dot' + (c.kind === 'direct' ? '' : ' group'));
    if (c.kind === 'direct') {
      li.dataset.peer = c.peer;
      const p = st.presence.get(c.peer);
      dot.dataset.online = String(!!(p && p.online));
    }
    li.append(dot, el('span', 'name', convName(c)));
    const unread = Math.max(0, c.last_seq - c.read_seq);
    const badge = el('span', 'unread', unread ? String(unread) : '');
    badge.hidden = !unread;
    li.append(badge);
    const m = st.entries.get(c.id);
    const last = m && m.size ? m.get(Math.max(...m.keys())) : null;
    li.append(el('span', 'preview', last ? preview(last) : c.kind));
    li.addEventListener('click', () => openConv(c.id));
    return li;
  }));
}

function preview(m) {
  const who = m.from === st.me ? 'you' : m.from;
  return `${who}: ${m.revoked ? 'message deleted' : (m.text || '[data]')}`;
}

function renderHead() {
  const c = st.convs.get(st.open);
  $('#chat').classList.toggle('empty', !c);
  if (!c) return;
  $('#chat-title').textContent = convName(c);
  $('#invite-form').hidden = c.kind === 'direct' || c.role === 'member';
  const status = $('#peer-status');
  let state = '';
  let text = '';
  const typers = typersOf(c.id);
  if (typers.length) {
    state = 'typing';
    text = c.kind === 'direct' ? 'typing…' : `${typers.join(', ')} typing…`;
  } else if (c.kind === 'direct') {
    const p = st.presence.get(c.peer);
    if (p && p.online) { state = 'online'; text = 'online'; }
    else if (p) { state = 'offline'; text = p.last_seen ? `last seen ${ago(p.last_seen)}` : 'offline'; }
  } else {
    const ms = st.members.get(c.id);
    const n = ms ? ms.size : c.members;
    const online = ms ? [...ms.keys()].filter((u) => u === st.me || (st.presence.get(u) || {}).online).length : 0;
    state = 'group';
    text = `${n} members, ${online} online`;
  }
  if (status.dataset.state !== state) status.dataset.state = state;
  if (status.textContent !== text) status.textContent = text;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return new Date(ms).toLocaleString();
}

// status of my message seq in conversation c: read or delivered when every
// other member has it, else sent.
function statusOf(c, seq) {
  const ms = st.members.get(c.id);
  if (!ms) return { status: 'sent', text: '✓' };
  const others = [...ms.values()].filter((m) => m.user !== st.me);
  if (!others.length) return { status: 'sent', text: '✓' };
  const read = others.filter((m) => m.read_seq >= seq).length;
  const delivered = others.filter((m) => m.delivered_seq >= seq).length;
  if (c.kind === 'direct') {
    if (read) return { status: 'read', text: '✓✓ read' };
    if (delivered) return { status: 'delivered', text: '✓✓' };
    return { status: 'sent', text: '✓' };
  }
  if (read === others.length) return { status: 'read', text: '✓✓ read by all' };
  if (delivered === others.length) return { status: 'delivered', text: `✓✓ read by ${read}/${others.length}` };
  return { status: 'sent', text: `✓ read by ${read}/${others.length}` };
}

function renderMessages(scroll) {
  const c = st.convs.get(st.open);
  const list = $('#msg-list');
  if (!c) { list.replaceChildren(); return; }
  const box = $('#messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const m = st.entries.get(c.id) || new Map();
  const seqs = [...m.keys()].sort((a, b) => a - b);
  $('#older').hidden = !seqs.length || seqs[0] <= Math.max(c.first_seq, c.joined_seq + 1);
  list.replaceChildren(...seqs.map((s) => {
    const e = m.get(s);
    const mine = e.from === st.me;
    const li = el('li', 'msg' + (mine ? ' mine' : '') + (e.revoked ? ' revoked' : ''));
    li.dataset.seq = String(s);
    li.dataset.from = e.from;
    li.append(el('div', 'from', e.from));
    let text = e.text;
    if (e.revoked) text = 'message deleted';
    else if (text === undefined) text = e.data !== undefined ? JSON.stringify(e.data) : '[binary]';
    li.append(el('div', 'text', text));
    const meta = el('div', 'meta', new Date(e.ts).toLocaleTimeString() + (e.edited_ts ? ' · edited' : ''));
    if (mine) {
      const s2 = statusOf(c, s);
      li.dataset.status = s2.status;
      const span = el('span', 'status', ` ${s2.text}`);
      span.dataset.status = s2.status;
      meta.append(span);
    }
    li.append(meta);
    return li;
  }));
  if (scroll || atBottom) box.scrollTop = box.scrollHeight;
}

init();
