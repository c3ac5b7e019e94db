/**
 * The inbox page: a static HTML shell, its stylesheet and its script, served as they are. Everything received is
 * fetched as JSON and put in the page with `textContent` and DOM nodes only, never as markup.
 */

/**
 * The page's policy: its own script and stylesheet, JSON and the event stream from itself, message documents in
 * frames from itself; nothing else, and no inline script.
 */
export const INBOX_PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export const INBOX_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sandbox inbox · m365-mailer</title>
<link rel="stylesheet" href="/inbox.css">
<script src="/inbox.js" defer></script>
</head>
<body>
<header>
  <h1>Sandbox inbox</h1>
  <nav>
    <a href="#/" id="nav-messages">Messages</a>
    <a href="#/pacing" id="nav-pacing">Pacing</a>
  </nav>
  <span id="live" class="live off">connecting…</span>
</header>
<main id="messages-view">
  <section id="list-pane" aria-label="Received messages">
    <p id="empty" class="muted">No message yet. Send one through the sandbox's Exchange SMTP.</p>
    <ul id="messages"></ul>
  </section>
  <section id="detail" aria-label="Message">
    <p class="muted">Select a message.</p>
  </section>
</main>
<main id="pacing-view" hidden>
  <section id="pacing" aria-label="Pacing"></section>
</main>
</body>
</html>
`;

export const INBOX_CSS = `
:root { color-scheme: light; --line: #d8dce3; --muted: #667085; --accent: #2563eb; --bad: #dc2626; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2937; background: #f6f7f9; }
header { display: flex; align-items: center; gap: 24px; padding: 10px 18px; background: #111827; color: #fff; }
header h1 { font-size: 16px; margin: 0; }
nav a { color: #cbd5e1; text-decoration: none; margin-right: 14px; }
nav a.current { color: #fff; font-weight: 600; border-bottom: 2px solid #60a5fa; }
.live { margin-left: auto; font-size: 12px; }
.live::before { content: "●"; margin-right: 4px; }
.live.on::before { color: #22c55e; }
.live.off::before { color: #f59e0b; }
main { display: flex; height: calc(100vh - 44px); }
main[hidden] { display: none; }
#list-pane { width: 38%; min-width: 280px; overflow: auto; border-right: 1px solid var(--line); background: #fff; }
#messages { list-style: none; margin: 0; padding: 0; }
#messages li { padding: 9px 14px; border-bottom: 1px solid var(--line); cursor: pointer; }
#messages li:hover { background: #f1f5f9; }
#messages li.selected { background: #e0ecff; }
#messages .row1 { display: flex; justify-content: space-between; gap: 8px; }
#messages .from { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#messages .time { color: var(--muted); font-size: 12px; white-space: nowrap; }
#messages .subject { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#messages .to { color: var(--muted); font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#detail { flex: 1; overflow: auto; padding: 14px 20px; }
#detail h2 { margin: 0 0 8px; font-size: 18px; overflow-wrap: anywhere; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0 0 12px; font-size: 13px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.tabs { display: flex; gap: 4px; border-bottom: 1px solid var(--line); margin-bottom: 10px; }
.tabs button { border: 1px solid transparent; border-bottom: none; background: none; padding: 6px 12px; cursor: pointer; font: inherit; color: var(--muted); }
.tabs button[aria-selected="true"] { border-color: var(--line); background: #fff; color: #111827; border-radius: 6px 6px 0 0; }
iframe.html { width: 100%; height: 60vh; border: 1px solid var(--line); background: #fff; }
pre { background: #fff; border: 1px solid var(--line); padding: 10px; white-space: pre-wrap; overflow-wrap: anywhere; font: 12px/1.5 ui-monospace, Menlo, Consolas, monospace; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
th, td { text-align: left; border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; overflow-wrap: anywhere; }
th { background: #f1f5f9; }
.muted { color: var(--muted); }
#pacing { padding: 16px 20px; overflow: auto; width: 100%; }
.mailbox { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin-bottom: 16px; }
.mailbox h2 { font-size: 16px; margin: 0 0 6px; }
.stats { display: flex; flex-wrap: wrap; gap: 18px; margin: 6px 0 10px; font-size: 13px; }
.stats b { font-size: 15px; }
.stats .bad { color: var(--bad); }
svg.chart { width: 100%; max-width: 760px; height: auto; display: block; }
svg.chart .bar { fill: var(--accent); }
svg.chart .bar.over { fill: var(--bad); }
svg.chart .limit { stroke: var(--bad); stroke-dasharray: 5 4; stroke-width: 1.5; }
svg.chart text { font-size: 11px; fill: var(--muted); }
svg.chart .axis { stroke: #94a3b8; }
h3 { font-size: 14px; margin: 12px 0 6px; }
`;

/** The page's script: plain browser JavaScript, no dependency. */
export const INBOX_SCRIPT = String.raw`'use strict';
(function () {
  var state = { selected: null, detail: null, tab: 'html' };
  var SVG = 'http://www.w3.org/2000/svg';

  function $(id) { return document.getElementById(id); }

  /** An element with properties, attributes (names with a dash or "for") and children; strings become text nodes. */
  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (key) {
        if (key.indexOf('-') >= 0 || key === 'sandbox' || key === 'role') node.setAttribute(key, props[key]);
        else node[key] = props[key];
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.append(child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, String(attrs[key])); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function time(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
  }

  function getJson(url) {
    return fetch(url, { headers: { accept: 'application/json' } }).then(function (r) {
      if (!r.ok) throw new Error(url + ': ' + r.status);
      return r.json();
    });
  }

  function messageUrl(id) { return '/api/messages/' + encodeURIComponent(id); }

  // The list ------------------------------------------------------------------------------------------------------

  function renderList(items) {
    var list = $('messages');
    list.replaceChildren();
    $('empty').hidden = items.length > 0;
    items.forEach(function (m) {
      var item = el('li', { 'data-id': m.id, className: m.id === state.selected ? 'selected' : '' },
        el('div', { className: 'row1' },
          el('span', { className: 'from', title: m.from }, m.from),
          el('span', { className: 'time', title: m.receivedAt }, time(m.receivedAt))),
        el('div', { className: 'subject' }, m.subject || '(no subject)'),
        el('div', { className: 'to' }, 'to ' + m.to.join(', ') + (m.attachments ? '  ·  ' + m.attachments + (m.attachments === 1 ? ' attachment' : ' attachments') : '')));
      item.addEventListener('click', function () { location.hash = '#/m/' + m.id; });
      list.append(item);
    });
  }

  function loadList() {
    return getJson('/api/messages').then(renderList);
  }

  // One message ---------------------------------------------------------------------------------------------------

  function meta(pairs) {
    var dl = el('dl', { className: 'meta' });
    pairs.forEach(function (p) {
      if (!p[1]) return;
      dl.append(el('dt', null, p[0]), el('dd', { 'data-field': p[0].toLowerCase() }, p[1]));
    });
    return dl;
  }

  function table(head, rows) {
    var t = el('table', null, el('thead', null, el('tr', null)));
    head.forEach(function (h) { t.tHead.rows[0].append(el('th', null, h)); });
    var body = el('tbody');
    rows.forEach(function (cells) {
      var tr = el('tr');
      cells.forEach(function (c) { tr.append(el('td', null, c)); });
      body.append(tr);
    });
    t.append(body);
    return t;
  }

  function telemetryPanel(items) {
    if (!items.length) return el('p', { className: 'muted' }, 'No telemetry about this message (yet). Events are matched by the outbox id in the Message-ID.');
    return table(['Event', 'Time', 'Properties', 'Measurements'], items.map(function (t) {
      var props = Object.keys(t.properties).map(function (k) { return k + '=' + t.properties[k]; }).join('\n');
      var meas = Object.keys(t.measurements).map(function (k) { return k + '=' + t.measurements[k]; }).join('\n');
      return [t.name, time(t.time), el('pre', null, props), el('pre', null, meas)];
    }));
  }

  function panels(d) {
    var htmlPanel = d.hasHtml
      ? el('iframe', { sandbox: '', className: 'html', title: 'HTML part', referrerPolicy: 'no-referrer', src: messageUrl(d.id) + '/html' })
      : el('p', { className: 'muted' }, 'This message has no HTML part.');
    var attachments = d.attachmentList.length
      ? table(['File', 'Type', 'Size', 'Disposition'], d.attachmentList.map(function (a) {
          var link = el('a', { href: messageUrl(d.id) + '/attachments/' + a.index, download: a.filename || 'attachment', 'data-attachment': String(a.index) }, a.filename || '(unnamed)');
          return [link, a.mimeType, a.sizeBytes + ' B', a.disposition + (a.contentId ? ' ' + a.contentId : '')];
        }))
      : el('p', { className: 'muted' }, 'No attachments.');
    var transcript = d.session
      ? el('div', null,
          meta([['Session', d.session.id], ['Client port', String(d.session.remotePort)], ['TLS', d.session.tlsVersion], ['AUTH', d.session.authMethod]]),
          el('pre', { id: 'transcript' }, d.session.transcript.join('\n') + (d.session.transcriptTruncated ? '\n…' : '')),
          d.rejections.length ? table(['Command', 'Reply', 'Text', 'At'], d.rejections.map(function (r) {
            return [r.command, r.code + ' ' + r.enhanced, r.text, time(r.at)];
          })) : null)
      : el('p', { className: 'muted' }, 'The session is no longer recorded.');
    return {
      html: htmlPanel,
      text: d.text ? el('pre', { id: 'text-part' }, d.text) : el('p', { className: 'muted' }, 'This message has no text part.'),
      headers: table(['Header', 'Value', 'As sent'], d.headers.map(function (h) {
        return [h.name, h.decoded, h.decoded === h.value ? '' : h.value];
      })),
      attachments: attachments,
      transcript: transcript,
      telemetry: el('div', { id: 'telemetry' }, telemetryPanel(d.telemetry)),
    };
  }

  var TABS = [['html', 'HTML'], ['text', 'Text'], ['headers', 'Headers'], ['attachments', 'Attachments'], ['transcript', 'SMTP transcript'], ['telemetry', 'Telemetry']];

  function renderDetail(d) {
    state.detail = d;
    var root = $('detail');
    var parts = panels(d);
    var tabs = el('div', { className: 'tabs', role: 'tablist' });
    var body = el('div');
    TABS.forEach(function (t) {
      var label = t[1];
      if (t[0] === 'attachments') label += ' (' + d.attachmentList.length + ')';
      if (t[0] === 'telemetry') label += ' (' + d.telemetry.length + ')';
      var button = el('button', { type: 'button', id: 'tab-' + t[0], role: 'tab', 'aria-selected': String(state.tab === t[0]) }, label);
      var panel = el('div', { id: 'panel-' + t[0], role: 'tabpanel', hidden: state.tab !== t[0] }, parts[t[0]]);
      button.addEventListener('click', function () {
        state.tab = t[0];
        Array.prototype.forEach.call(tabs.children, function (b) { b.setAttribute('aria-selected', String(b === button)); });
        Array.prototype.forEach.call(body.children, function (p) { p.hidden = p !== panel; });
      });
      tabs.append(button);
      body.append(panel);
    });
    root.replaceChildren(
      el('h2', { id: 'subject' }, d.subject || '(no subject)'),
      meta([
        ['From', d.from], ['To', d.to.join(', ')], ['Cc', d.cc.join(', ')], ['Date', d.date],
        ['Received', new Date(d.receivedAt).toLocaleString()], ['Message-ID', d.messageId],
        ['Envelope', d.envelope.from + ' → ' + d.envelope.to.join(', ')],
        ['Mailbox', d.mailbox + ' (' + d.authMethod + ', ' + d.tlsVersion + ')'], ['Size', d.sizeBytes + ' bytes'],
      ]),
      el('p', null, el('a', { href: messageUrl(d.id) + '/raw', download: d.id + '.eml' }, 'Download .eml')),
      tabs, body);
  }

  function select(id) {
    state.selected = id;
    Array.prototype.forEach.call($('messages').children, function (li) {
      li.className = li.getAttribute('data-id') === id ? 'selected' : '';
    });
    return getJson(messageUrl(id)).then(renderDetail, function () {
      $('detail').replaceChildren(el('p', { className: 'muted' }, 'That message is no longer in the sandbox.'));
    });
  }

  function refreshTelemetry() {
    if (!state.selected || !state.detail) return;
    var id = state.selected;
    getJson(messageUrl(id)).then(function (d) {
      if (state.selected !== id) return;
      state.detail = d;
      var panel = $('telemetry');
      if (panel) panel.replaceChildren(telemetryPanel(d.telemetry));
      var tab = $('tab-telemetry');
      if (tab) tab.textContent = 'Telemetry (' + d.telemetry.length + ')';
    }).catch(function () {});
  }

  // Pacing --------------------------------------------------------------------------------------------------------

  function chart(box, limits) {
    var W = 720, H = 190, left = 36, bottom = 24, top = 12;
    var counts = box.windows.map(function (w) { return w.count; });
    var max = Math.max(limits.ratePerMinute * 1.25, Math.max.apply(null, counts.concat([1])));
    var plotH = H - top - bottom, plotW = W - left - 8;
    var step = plotW / counts.length;
    var y = function (v) { return top + plotH - (v / max) * plotH; };
    var root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img', 'aria-label': 'Messages per window against the limit' });
    root.append(svg('line', { x1: left, y1: top + plotH, x2: W - 8, y2: top + plotH, class: 'axis' }));
    box.windows.forEach(function (w, i) {
      var h = Math.max(0, top + plotH - y(w.count));
      var bar = svg('rect', { x: left + i * step + 2, y: y(w.count), width: Math.max(1, step - 4), height: h, class: w.count > limits.ratePerMinute ? 'bar over' : 'bar' });
      bar.append(svg('title', {}, time(w.start) + ': ' + w.count + ' sent'));
      root.append(bar);
      if (w.count > 0) root.append(svg('text', { x: left + i * step + step / 2, y: y(w.count) - 3, 'text-anchor': 'middle' }, String(w.count)));
    });
    root.append(svg('line', { x1: left, y1: y(limits.ratePerMinute), x2: W - 8, y2: y(limits.ratePerMinute), class: 'limit' }));
    root.append(svg('text', { x: left - 4, y: y(limits.ratePerMinute) + 4, 'text-anchor': 'end' }, String(limits.ratePerMinute)));
    root.append(svg('text', { x: left - 4, y: top + plotH + 4, 'text-anchor': 'end' }, '0'));
    root.append(svg('text', { x: left, y: H - 6 }, time(box.windows[0].start)));
    root.append(svg('text', { x: W - 8, y: H - 6, 'text-anchor': 'end' }, 'now'));
    return root;
  }

  function windowLabel(ms) {
    return ms % 60000 === 0 ? (ms / 60000 === 1 ? 'minute' : ms / 60000 + ' minutes') : ms / 1000 + ' s';
  }

  function renderPacing(p) {
    var root = $('pacing');
    var intro = el('p', { className: 'muted' },
      'Messages accepted per ' + windowLabel(p.limits.rateWindowMs) + ' against the limit of ' + p.limits.ratePerMinute +
      ' (dashed line); red bars went over it. At most ' + p.limits.maxConnectionsPerMailbox +
      ' concurrent sessions per mailbox; the next one is answered 432 4.3.2.');
    if (!p.mailboxes.length) {
      root.replaceChildren(el('h2', null, 'Pacing'), intro, el('p', { className: 'muted' }, 'Nothing sent yet.'));
      return;
    }
    var boxes = p.mailboxes.map(function (b) {
      var stat = function (label, value, bad) {
        return el('span', { className: bad ? 'bad' : '' }, label + ' ', el('b', null, String(value)));
      };
      return el('section', { className: 'mailbox', 'data-mailbox': b.mailbox },
        el('h2', null, b.mailbox),
        el('div', { className: 'stats' },
          stat('accepted', b.accepted),
          stat('most in one window', b.maxInAnyWindow + ' / ' + p.limits.ratePerMinute, b.maxInAnyWindow > p.limits.ratePerMinute),
          el('span', { className: b.violationCount ? 'bad' : '', id: 'rate-violations' }, 'rate violations ', el('b', null, String(b.violationCount))),
          el('span', { className: b.throttledCount ? 'bad' : '', id: 'throttled' }, '432 replies ', el('b', null, String(b.throttledCount))),
          stat('peak sessions', b.maxConcurrentSessions + ' / ' + p.limits.maxConnectionsPerMailbox, b.maxConcurrentSessions > p.limits.maxConnectionsPerMailbox),
          stat('recipients today', b.recipientsToday + ' / ' + p.limits.dailyRecipients, false)),
        chart(b, p.limits),
        b.violations.length ? el('h3', null, 'Rate violations (newest ' + b.violations.length + ')') : null,
        b.violations.length ? table(['At', 'In window', 'Limit'], b.violations.slice().reverse().map(function (v) {
          return [time(v.at), String(v.count), String(v.limit)];
        })) : null,
        b.throttled.length ? el('h3', null, '432 replies (newest ' + b.throttled.length + ')') : null,
        b.throttled.length ? table(['At', 'Command', 'Reply'], b.throttled.slice().reverse().map(function (r) {
          return [time(r.at), r.command, '432 ' + r.enhanced + ' ' + r.text];
        })) : null);
    });
    root.replaceChildren.apply(root, [el('h2', null, 'Pacing'), intro].concat(boxes));
  }

  function loadPacing() {
    return getJson('/api/pacing').then(renderPacing);
  }

  // Routing and live updates --------------------------------------------------------------------------------------

  function route() {
    var hash = location.hash || '#/';
    var pacing = hash === '#/pacing';
    $('messages-view').hidden = pacing;
    $('pacing-view').hidden = !pacing;
    $('nav-messages').className = pacing ? '' : 'current';
    $('nav-pacing').className = pacing ? 'current' : '';
    if (pacing) return loadPacing();
    var match = /^#\/m\/([0-9a-f]+)$/.exec(hash);
    if (match && match[1] !== state.selected) return select(match[1]);
    return Promise.resolve();
  }

  function connect() {
    var events = new EventSource('/api/events');
    var live = $('live');
    events.onopen = function () { live.className = 'live on'; live.textContent = 'live'; };
    events.onerror = function () { live.className = 'live off'; live.textContent = 'reconnecting…'; };
    events.addEventListener('received', function () {
      loadList();
      if (!$('pacing-view').hidden) loadPacing();
    });
    events.addEventListener('refused', function () {
      if (!$('pacing-view').hidden) loadPacing();
    });
    events.addEventListener('telemetry', refreshTelemetry);
  }

  window.addEventListener('hashchange', route);
  loadList().then(route).then(function () { document.body.setAttribute('data-ready', 'true'); });
  connect();
})();
`;
