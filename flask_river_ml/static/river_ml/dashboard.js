// The flask-river-ml dashboard: models with their stats and metrics, a live chart per metric
// fed by the metrics stream, and the latest events. With authentication on, it exchanges the
// user's API token for an access token and passes it as ?token= to the streams.
(() => {
  "use strict";
  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "river_ml_access_token";
  const MAX_POINTS = 500;
  const MAX_EVENTS = 50;
  let token = sessionStorage.getItem(TOKEN_KEY);
  let sources = [];
  const charts = new Map(); // "model/metric" -> {plot, data}

  function showLogin(message) {
    sources.forEach((source) => source.close());
    sources = [];
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("dashboard").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("status").textContent = "logged out";
  }

  async function login(event) {
    event.preventDefault();
    const basic = btoa(`${$("user").value}:${$("api-token").value}`);
    const response = await fetch(config.tokenUrl, { headers: { Authorization: `Basic ${basic}` } });
    const body = await response.json();
    if (!response.ok) {
      $("login-error").textContent = body.message;
      return;
    }
    token = body.token;
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  }

  async function api(url) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(url, { headers });
    const body = await response.json();
    if (response.status === 401) {
      showLogin(body.message);
      throw new Error(body.message);
    }
    if (!response.ok) throw new Error(body.message);
    return body;
  }

  const duration = (stats) => stats.mean_duration_human;
  // A metric never fed is null: shown as a dash, and its chart waits for its first value.
  const number = (value) => {
    if (value === null) return "—";
    return typeof value === "number" ? value.toPrecision(4) : String(value);
  };

  function renderModels(models) {
    const rows = models.map((model) => {
      const metrics = Object.entries(model.metrics || {}).map(([name, value]) => `${name} ${number(value)}`).join(", ");
      const cells = [model.name, model.flavor, model.stats.learn.n_calls, model.stats.predict.n_calls,
        duration(model.stats.learn), duration(model.stats.predict), metrics || "—"];
      const row = document.createElement("tr");
      row.dataset.model = model.name;
      cells.forEach((cell) => {
        const td = document.createElement("td");
        td.textContent = cell;
        row.appendChild(td);
      });
      return row;
    });
    $("models").tBodies[0].replaceChildren(...rows);
    $("no-models").hidden = models.length > 0;
    // New models and metrics get a chart, starting from their current value; the stream adds
    // the points after that.
    models.forEach((model) => Object.entries(model.metrics || {}).forEach(([metric, value]) => {
      if (!charts.has(`${model.name}/${metric}`)) chart(model.name, metric, value);
    }));
  }

  function chart(model, metric, value) {
    const key = `${model}/${metric}`;
    let entry = charts.get(key);
    if (!entry) {
      const box = document.createElement("div");
      box.className = "chart";
      box.dataset.chart = key;
      const title = document.createElement("h3");
      title.textContent = `${model} · ${metric}`;
      box.appendChild(title);
      $("charts").appendChild(box);
      const data = [[], []];
      const options = { width: 360, height: 180, legend: { show: false },
        series: [{}, { label: metric, stroke: "#1c4f8f", width: 2, points: { show: true, size: 4 } }] };
      entry = { plot: new uPlot(options, data, box), data };
      charts.set(key, entry);
    }
    if (typeof value === "number" && Number.isFinite(value)) {
      entry.data[0].push(Date.now() / 1000);
      entry.data[1].push(value);
      if (entry.data[0].length > MAX_POINTS) entry.data.forEach((series) => series.shift());
      entry.plot.setData(entry.data);
      entry.plot.root.dataset.points = String(entry.data[0].length);
    }
  }

  function showEvent(kind, data) {
    const item = document.createElement("li");
    item.className = kind;
    const truth = "ground_truth" in data ? ` truth=${JSON.stringify(data.ground_truth)}` : "";
    item.textContent = `${new Date().toLocaleTimeString()} ${kind} ${data.model} prediction=${JSON.stringify(data.prediction)}${truth}`;
    $("events").prepend(item);
    while ($("events").children.length > MAX_EVENTS) $("events").lastChild.remove();
  }

  let refreshing = null;
  function refreshSoon() {
    // Stats and new models change with every event: refresh at most every two seconds (the
    // refreshes count against the user's rate limit).
    if (!refreshing) refreshing = setTimeout(() => { refreshing = null; refresh(); }, 2000);
  }

  async function refresh() {
    try {
      renderModels(await api(config.dataUrl));
    } catch (error) {
      $("status").textContent = error.message;
    }
  }

  function listen() {
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    const metrics = new EventSource(config.metricsUrl + query);
    metrics.onmessage = (message) => {
      const values = JSON.parse(message.data);
      Object.entries(values).forEach(([metric, value]) => { if (metric !== "model") chart(values.model, metric, value); });
      refreshSoon();
    };
    const events = new EventSource(config.eventsUrl + query);
    ["learn", "predict", "label"].forEach((kind) =>
      events.addEventListener(kind, (message) => { showEvent(kind, JSON.parse(message.data)); refreshSoon(); }));
    events.onopen = () => { $("status").textContent = "live"; };
    events.onerror = () => { $("status").textContent = "reconnecting…"; };
    sources = [metrics, events];
  }

  async function start() {
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = !config.authRequired;
    await refresh();
    if (!$("dashboard").hidden) listen();
  }

  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", () => showLogin());
  if (config.authRequired && !token) showLogin(); else start();
})();
