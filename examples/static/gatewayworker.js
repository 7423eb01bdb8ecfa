/*
 * gatewayworker.js: the browser side of the push pattern (plain JavaScript, no build).
 *
 * How it works
 * ------------
 * 1. open a WebSocket to the gateway;
 * 2. the app's Events.on_connect sends {"type": "init", "client_id": "..."};
 * 3. POST {"client_id": ...} as JSON to your web backend's bind URL; the backend knows
 *    the logged-in user (session cookie) and calls bind_uid / join_group;
 * 4. every other message the gateway delivers goes to your onMessage handler;
 * 5. when the connection drops, open a new one after a delay that doubles on every
 *    failure (with jitter, capped), and bind the new client_id again: a client_id
 *    belongs to one connection only, so a reconnected page must be bound anew.
 *
 * The gateway's heartbeat {"type": "ping"} is answered with {"type": "pong"}: any
 * message from the page counts as life, so a gateway with ping_not_response_limit > 0
 * keeps the connection. Your Events.on_message just ignores the pongs.
 *
 * Usage
 * -----
 *   <script src="/static/gatewayworker.js"></script>
 *   <script>
 *     const push = GatewayWorker.connect({
 *       url: "ws://127.0.0.1:7272/",
 *       bindUrl: "/bind",
 *       headers: () => ({"X-CSRFToken": GatewayWorker.meta("csrf-token")}),
 *       onMessage: (message) => { ... },          // parsed JSON (or the raw text)
 *       onStatus: (state, detail) => { ... },     // see STATES below
 *     });
 *     // push.stop() closes for good; push.clientId is the current id (or null).
 *   </script>
 *
 * Options: url (required), bindUrl (required), headers (a function returning extra
 * request headers, called for every bind: CSRF tokens; GatewayWorker.meta(name) and
 * GatewayWorker.cookie(name) read a <meta> tag or a cookie), minDelay / maxDelay
 * (milliseconds of the reconnect backoff, default 500 and 30000), pong (the answer
 * to a ping; null sends none).
 */
(function (global) {
  "use strict";

  /** What onStatus(state, detail) reports, in the order a good run goes through. */
  const STATES = {
    CONNECTING: "connecting", // a WebSocket is opening
    BINDING: "binding", // init received; the bind request is on its way (detail: client_id)
    BOUND: "bound", // the backend bound this connection (detail: its JSON answer)
    RETRYING: "retrying", // the connection is gone; next try in detail.delay ms
    FAILED: "failed", // the backend refused the bind for good (401/403); stopped
    STOPPED: "stopped", // stop() was called
  };
  const FATAL = new Set([401, 403]); // not logged in / bad CSRF token: retrying cannot help

  /** The value of cookie `name`, or "" (Django's CSRF cookie is read this way). */
  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [key, ...rest] = part.trim().split("=");
      if (key === name) return decodeURIComponent(rest.join("="));
    }
    return "";
  }

  /** The content of <meta name="NAME">, or "" (Flask / FastAPI put their token there). */
  function meta(name) {
    const element = document.querySelector(`meta[name="${name}"]`);
    return element ? element.content : "";
  }

  class PushConnection {
    constructor(options) {
      if (!options || !options.url || !options.bindUrl) {
        throw new Error("GatewayWorker.connect needs {url, bindUrl}");
      }
      this.url = options.url;
      this.bindUrl = options.bindUrl;
      this.headers = options.headers || (() => ({}));
      this.onMessage = options.onMessage || (() => {});
      this.onStatus = options.onStatus || (() => {});
      this.minDelay = options.minDelay ?? 500;
      this.maxDelay = options.maxDelay ?? 30000;
      this.pong = options.pong === undefined ? '{"type":"pong"}' : options.pong;
      this.clientId = null;
      this.failures = 0; // connections in a row that ended before being bound
      this.ws = null;
      this.timer = null;
      this.stopped = false;
    }

    /** Open the first connection (connect() calls this). */
    start() {
      this.stopped = false;
      this._open();
      return this;
    }

    /** Close for good: no reconnect. */
    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.ws) this.ws.close(1000);
      this._status(STATES.STOPPED);
    }

    _status(state, detail) {
      try {
        this.onStatus(state, detail);
      } catch (error) {
        console.error("gatewayworker.js: onStatus failed", error);
      }
    }

    _open() {
      this.clientId = null;
      this._status(STATES.CONNECTING);
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onmessage = (event) => this._receive(ws, event.data);
      // onerror is always followed by onclose, which does the work.
      ws.onclose = () => {
        if (ws === this.ws) this._closed();
      };
    }

    _receive(ws, data) {
      let message = data;
      try {
        message = JSON.parse(data);
      } catch (error) {
        // not JSON: hand the text over as it is
      }
      if (message && message.type === "ping") {
        if (this.pong !== null && ws.readyState === WebSocket.OPEN) ws.send(this.pong);
        return;
      }
      if (message && message.type === "init") {
        this._bind(ws, message.client_id);
        return;
      }
      try {
        this.onMessage(message);
      } catch (error) {
        console.error("gatewayworker.js: onMessage failed", error);
      }
    }

    async _bind(ws, clientId) {
      this.clientId = clientId;
      this._status(STATES.BINDING, clientId);
      let response;
      try {
        response = await fetch(this.bindUrl, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", ...this.headers() },
          body: JSON.stringify({ client_id: clientId }),
        });
      } catch (error) {
        response = null; // the backend is down: treated like a 5xx below
      }
      if (ws !== this.ws || this.stopped) return; // a newer connection took over
      if (response && response.ok) {
        this.failures = 0;
        this._status(STATES.BOUND, await response.json().catch(() => ({})));
        return;
      }
      const status = response ? response.status : 0;
      if (FATAL.has(status)) {
        this.stopped = true;
        ws.close(1000);
        this._status(STATES.FAILED, { status, text: await response.text().catch(() => "") });
        return;
      }
      ws.close(1000); // unbound connections are useless: start again after a delay
    }

    _closed() {
      this.clientId = null;
      if (this.stopped) return;
      const delay = this._nextDelay();
      this.failures += 1;
      this._status(STATES.RETRYING, { delay });
      this.timer = setTimeout(() => this._open(), delay);
    }

    /** minDelay * 2^failures, capped at maxDelay, minus up to half of it at random so
     * that pages dropped together by a gateway restart do not come back in step. */
    _nextDelay() {
      const full = Math.min(this.maxDelay, this.minDelay * 2 ** Math.min(this.failures, 16));
      return Math.round(full / 2 + (Math.random() * full) / 2);
    }
  }

  /** Open a connection that binds itself and comes back after every drop. */
  function connect(options) {
    return new PushConnection(options).start();
  }

  global.GatewayWorker = { connect, cookie, meta, STATES, PushConnection };
})(window);
