/*
 * shop.js: the examples' page logic on top of gatewayworker.js (plain JavaScript).
 *
 * The page's <body> tells it where the gateway is and how the backend wants its CSRF
 * token: data-ws-url, data-csrf-header (the header: X-CSRFToken for Django,
 * X-CSRF-Token for Flask and FastAPI) and data-csrf-meta (the <meta name="..."> that
 * holds the token). The "Buy" button posts /orders; the payment provider later calls
 * the backend, which pushes {"type": "payment", ...} to this user.
 *
 * For tests and curious readers, the state shows in data attributes:
 * #status[data-state] (see GatewayWorker.STATES), #status[data-client-id],
 * #status[data-binds] (how many times a connection was bound), #order[data-order-id]
 * and #payment[data-status].
 */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const page = document.body.dataset;
  if (!$("status")) return; // the login form: nothing to connect yet

  function csrfHeaders() {
    return { [page.csrfHeader]: GatewayWorker.meta(page.csrfMeta) };
  }

  function show(state, text) {
    $("status").dataset.state = state;
    $("status").textContent = text;
  }

  function log(text) {
    const item = document.createElement("li");
    item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    $("log").prepend(item);
  }

  function onStatus(state, detail) {
    const status = $("status");
    if (state === GatewayWorker.STATES.BOUND) {
      status.dataset.clientId = detail.client_id;
      status.dataset.binds = String(Number(status.dataset.binds || 0) + 1);
      show(state, `bound to ${detail.uid} (client_id ${detail.client_id})`);
    } else if (state === GatewayWorker.STATES.RETRYING) {
      show(state, `disconnected; reconnecting in ${detail.delay} ms`);
    } else if (state === GatewayWorker.STATES.FAILED) {
      show(state, `the backend refused the bind (${detail.status}); reload the page`);
    } else {
      show(state, state);
    }
  }

  function onMessage(message) {
    log(typeof message === "string" ? message : JSON.stringify(message));
    if (message && message.type === "payment") {
      $("payment").dataset.status = message.status;
      $("payment").textContent = `${message.order_id}: ${message.status}`;
      if ($("order").dataset.orderId === message.order_id) $("order").textContent = "";
    }
  }

  async function buy() {
    const response = await fetch("/orders", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", ...csrfHeaders() },
      body: "{}",
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      log(`order refused (${response.status}): ${answer.error || ""}`);
      return;
    }
    $("order").dataset.orderId = answer.order_id;
    $("order").textContent =
      `${answer.order_id}: waiting for the provider's callback ` +
      `(play it: python examples/provider.py ${location.origin} ${answer.order_id})`;
  }

  window.shopPush = GatewayWorker.connect({
    url: page.wsUrl,
    bindUrl: "/bind",
    headers: csrfHeaders,
    onStatus,
    onMessage,
  });
  $("buy").onclick = () => buy().catch((error) => log(String(error)));
})();
