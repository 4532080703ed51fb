// lipwass web page: upload two sample sets, estimate, follow the job, read the result.
// Plain ES module, no dependency. Everything it asks for is on this server (/v1/..., /openapi.json).
// The controls are built from /openapi.json: a knob or an upload option appears when the running
// server declares it (alpha, weights, columns, header, ...) and is sent only then.

const boot = JSON.parse(document.getElementById("lipwass-boot").textContent);
const ROOT = boot.root || "";
const CONFIG_DEFAULTS = boot.config_defaults || {};
const api = (path) => ROOT + path;
// API key: asked for when the server has keys (boot.auth); kept for this browser tab only.
const KEY_STORE = "lipwass-api-key";
let apiKey = sessionStorage.getItem(KEY_STORE) || "";
const authHeaders = () => (apiKey ? { Authorization: `Bearer ${apiKey}` } : {});
const $ = (sel, el = document) => el.querySelector(sel);
const HISTORY_PAGE = 10;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
// Training knobs offered as fields (when the server's config has them); the rest go as JSON.
const MAIN_CONFIG_KNOBS = ["steps", "scaling", "scale", "standardize", "permutations"];
const REQUEST_ORDER = ["method", "crosscheck", "holdout", "alpha", "scaling", "seed"];

const CONTENT_TYPES = {
  npy: "application/x-npy",
  csv: "text/csv",
  tsv: "text/csv",
  txt: "text/csv",
  json: "application/json",
  arrow: "application/vnd.apache.arrow.stream",
  arrows: "application/vnd.apache.arrow.stream",
  ipc: "application/vnd.apache.arrow.stream",
  parquet: "application/vnd.apache.parquet",
};

const LABELS = {
  method: "Method",
  crosscheck: "Exact cross-check",
  holdout: "Held-out fraction",
  alpha: "Significance level α",
  seed: "Seed",
  steps: "Training steps",
  scaling: "Scaling",
  scale: "Scaling",
  standardize: "Standardize features",
  permutations: "Test permutations",
  name: "Name",
  weights: "Weight column",
  columns: "Columns",
  exclude: "Exclude columns",
  header: "Header row",
  delimiter: "Delimiter",
};

// ---------------------------------------------------------------- small helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmt(x, digits = 4) {
  if (x === null || x === undefined) return "—";
  if (typeof x !== "number") return String(x);
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e-3 && a < 1e6) return String(Number(x.toPrecision(digits)));
  return x.toExponential(digits - 1);
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function fmtCI(ci) {
  return Array.isArray(ci) && ci.length === 2 ? `[${fmt(ci[0])}, ${fmt(ci[1])}]` : null;
}

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function humanize(name) {
  return LABELS[name] || name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

// A problem document (RFC 9457) of any failed answer, or one made up for a network failure.
class Problem extends Error {
  constructor(doc) {
    super(doc.detail || doc.title || "Error");
    this.doc = doc;
  }
}

function problemFromText(status, statusText, text) {
  try {
    const doc = JSON.parse(text);
    if (doc && typeof doc === "object" && (doc.title || doc.detail)) return new Problem(doc);
  } catch {
    // not JSON: fall through
  }
  return new Problem({ title: statusText || `HTTP ${status}`, status, detail: text || null });
}

async function request(path, options = {}) {
  let resp;
  try {
    const headers = { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) };
    resp = await fetch(api(path), { ...options, headers });
  } catch (err) {
    throw new Problem({ title: "The server could not be reached", detail: String(err) });
  }
  const text = await resp.text();
  if (!resp.ok) throw problemFromText(resp.status, resp.statusText, text);
  return text ? JSON.parse(text) : null;
}

function showProblem(el, err) {
  el.replaceChildren();
  if (!err) {
    el.hidden = true;
    return;
  }
  const doc = err instanceof Problem ? err.doc : { title: "Error", detail: String(err) };
  el.append(h("strong", { text: doc.title || "Error" }));
  if (doc.status) el.append(h("span", { class: "muted", text: ` (HTTP ${doc.status})` }));
  if (doc.detail) el.append(h("p", { text: doc.detail }));
  if (Array.isArray(doc.errors) && doc.errors.length) {
    el.append(
      h(
        "ul",
        {},
        doc.errors.map((e) => {
          const loc = Array.isArray(e.loc) ? e.loc.join(" › ") : e.loc;
          return h("li", {}, loc ? h("code", { text: loc }) : null, loc ? ": " : "", e.msg || "");
        }),
      ),
    );
  }
  el.hidden = false;
}

// ---------------------------------------------------------------- controls from the schema

let spec = null;

function deref(schema) {
  if (schema && schema.$ref && spec) {
    const name = schema.$ref.split("/").pop();
    return { ...spec.components.schemas[name], ...schema, $ref: undefined };
  }
  return schema || {};
}

// {type, enum, nullable, ...} of a JSON schema, anyOf [X, null] flattened.
function flatten(schema) {
  schema = deref(schema);
  const out = { ...schema, nullable: false };
  const alts = schema.anyOf || schema.oneOf;
  if (alts) {
    const real = alts.map(deref).filter((s) => s.type !== "null");
    out.nullable = real.length < alts.length;
    if (real.length === 1) Object.assign(out, real[0], { description: schema.description });
    else if (real.every((s) => s.const !== undefined || s.enum))
      out.enum = real.flatMap((s) => (s.enum ? s.enum : [s.const]));
    delete out.anyOf;
    delete out.oneOf;
  }
  if (out.const !== undefined && !out.enum) out.enum = [out.const];
  return out;
}

// One labelled control for a schema property; .read() gives the value to send or undefined.
function control(prefix, name, rawSchema, fallbackDefault) {
  const s = flatten(rawSchema);
  const id = `${prefix}-${name}`;
  const def = s.default !== undefined ? s.default : fallbackDefault;
  const helpId = `${id}-help`;
  const help = [];
  if (s.description) help.push(s.description);
  if (def !== undefined && def !== null) help.push(`Default: ${JSON.stringify(def)}.`);
  const helpEl = help.length ? h("p", { class: "help", id: helpId, text: help.join(" ") }) : null;
  const described = helpEl ? helpId : null;
  let input;
  let read;
  if (s.enum) {
    const options = s.enum.map((v) => h("option", { value: JSON.stringify(v), text: String(v) }));
    if (s.nullable || def === undefined) options.unshift(h("option", { value: "", text: "(server default)" }));
    input = h("select", { id, name, "aria-describedby": described }, options);
    input.value = def === undefined || def === null ? "" : JSON.stringify(def);
    read = () => (input.value === "" ? undefined : JSON.parse(input.value));
  } else if (s.type === "boolean" && typeof def === "boolean") {
    input = h("input", { id, name, type: "checkbox", "aria-describedby": described });
    input.checked = def;
    read = () => input.checked;
  } else if (s.type === "boolean") {
    input = h(
      "select",
      { id, name, "aria-describedby": described },
      h("option", { value: "", text: "(auto)" }),
      h("option", { value: "true", text: "yes" }),
      h("option", { value: "false", text: "no" }),
    );
    read = () => (input.value === "" ? undefined : input.value === "true");
  } else if (s.type === "integer" || s.type === "number") {
    const attrs = { id, name, type: "number", step: s.type === "integer" ? "1" : "any" };
    if (s.minimum !== undefined) attrs.min = s.minimum;
    if (s.exclusiveMinimum !== undefined) attrs.min = s.exclusiveMinimum;
    if (s.maximum !== undefined) attrs.max = s.maximum;
    if (s.exclusiveMaximum !== undefined) attrs.max = s.exclusiveMaximum;
    input = h("input", { ...attrs, inputmode: "decimal", "aria-describedby": described });
    if (def !== undefined && def !== null) input.value = String(def);
    read = () => {
      if (input.value.trim() === "") return undefined;
      const v = Number(input.value);
      return Number.isNaN(v) ? input.value : v;
    };
  } else if (s.type === "array") {
    input = h("input", { id, name, type: "text", placeholder: "comma-separated", "aria-describedby": described });
    if (Array.isArray(def)) input.value = def.join(", ");
    read = () => {
      const parts = input.value.split(",").map((p) => p.trim()).filter(Boolean);
      return parts.length ? parts : undefined;
    };
  } else {
    input = h("input", { id, name, type: "text", autocomplete: "off", "aria-describedby": described });
    if (def !== undefined && def !== null) input.value = String(def);
    read = () => (input.value === "" ? undefined : input.value);
  }
  const label = h("label", { for: id, text: humanize(name) });
  const wrap = h("div", { class: `field${input.type === "checkbox" ? " check" : ""}` }, label, input, helpEl);
  return { name, el: wrap, input, read, default: def, schema: s };
}

// ---------------------------------------------------------------- uploads

function contentTypeOf(file) {
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  return CONTENT_TYPES[ext] || file.type || "application/octet-stream";
}

class UploadSlot {
  constructor(fieldset, params) {
    this.role = fieldset.dataset.role;
    this.fieldset = fieldset;
    fieldset.append($("#upload-template").content.cloneNode(true));
    this.drop = $(".drop", fieldset);
    this.fileInput = $(".file", fieldset);
    this.fileInput.id = `${this.role}-file`;
    this.fileInput.setAttribute("aria-describedby", `${this.role}-formats`);
    $(".formats", fieldset).id = `${this.role}-formats`;
    this.bar = $(".upload-progress progress", fieldset);
    this.barWrap = $(".upload-progress", fieldset);
    this.status = $(".upload-status", fieldset);
    this.problem = $(".upload-problem", fieldset);
    this.dsid = $(".dsid", fieldset);
    this.dsid.id = `${this.role}-dataset`;
    $(".dsid-label", fieldset).setAttribute("for", this.dsid.id);
    this.summary = $(".dataset", fieldset);
    this.file = null;
    this.xhr = null;
    this.nameEdited = false;
    // The upload route's query parameters, as this server declares them.
    const box = $(".upload-options", fieldset);
    this.options = params.map((p) => control(`${this.role}-opt`, p.name, { ...p.schema, description: p.description || p.schema?.description }));
    if (this.options.length) {
      const details = h("details", { class: "options" }, h("summary", { text: "Upload options" }));
      const hint = h("p", { class: "help", text: "Set these before choosing the file; “Upload again” resends it with new ones." });
      details.append(hint, h("div", { class: "knob-grid" }, this.options.map((o) => o.el)));
      box.append(details);
      const nameOpt = this.options.find((o) => o.name === "name");
      if (nameOpt) nameOpt.input.addEventListener("input", () => (this.nameEdited = true));
    }
    this.again = h("button", { type: "button", class: "again", hidden: true, text: "Upload again", onclick: () => this.upload() });
    this.barWrap.after(this.again);

    this.fileInput.addEventListener("change", () => {
      if (this.fileInput.files.length) this.choose(this.fileInput.files[0]);
    });
    for (const ev of ["dragenter", "dragover"]) {
      this.drop.addEventListener(ev, (e) => {
        e.preventDefault();
        this.drop.classList.add("over");
      });
    }
    for (const ev of ["dragleave", "dragend"]) this.drop.addEventListener(ev, () => this.drop.classList.remove("over"));
    this.drop.addEventListener("drop", (e) => {
      e.preventDefault();
      this.drop.classList.remove("over");
      const files = e.dataTransfer && e.dataTransfer.files;
      if (files && files.length) this.choose(files[0]);
    });
    this.dsid.addEventListener("change", () => this.lookup());
  }

  choose(file) {
    this.file = file;
    $(".drop-text", this.fieldset).textContent = `${file.name} (${fmtBytes(file.size)})`;
    const nameOpt = this.options.find((o) => o.name === "name");
    if (nameOpt && !this.nameEdited) nameOpt.input.value = file.name.replace(/\.[^.]+$/, "");
    this.upload();
  }

  query() {
    const q = new URLSearchParams();
    for (const o of this.options) {
      const v = o.read();
      if (v === undefined || (o.default !== undefined && JSON.stringify(v) === JSON.stringify(o.default))) continue;
      if (Array.isArray(v)) v.forEach((x) => q.append(o.name, String(x)));
      else q.append(o.name, String(v));
    }
    return q.toString();
  }

  // Streams the File itself (the browser reads it as it sends), with the upload's progress.
  upload() {
    if (!this.file) return;
    if (this.xhr) this.xhr.abort();
    const file = this.file;
    const xhr = new XMLHttpRequest();
    this.xhr = xhr;
    const q = this.query();
    xhr.open("POST", api(`/v1/datasets${q ? `?${q}` : ""}`));
    xhr.setRequestHeader("Content-Type", contentTypeOf(file));
    xhr.setRequestHeader("Accept", "application/json");
    if (apiKey) xhr.setRequestHeader("Authorization", `Bearer ${apiKey}`);
    this.dsid.value = "";
    this.summary.textContent = "";
    showProblem(this.problem, null);
    this.again.hidden = true;
    this.barWrap.hidden = false;
    this.bar.value = 0;
    this.status.textContent = `Uploading ${file.name}…`;
    this.fieldset.dataset.state = "uploading";
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      this.bar.value = e.loaded / e.total;
      this.status.textContent = `Uploading: ${fmtBytes(e.loaded)} of ${fmtBytes(e.total)}`;
    };
    xhr.upload.onload = () => {
      this.bar.value = 1;
      this.status.textContent = "Sent; the server is checking the data…";
    };
    xhr.onload = () => {
      if (this.xhr !== xhr) return;
      this.xhr = null;
      this.again.hidden = false;
      if (xhr.status === 200 || xhr.status === 201) {
        const ds = JSON.parse(xhr.responseText);
        this.dsid.value = ds.id;
        this.status.textContent = xhr.status === 200 ? "Already uploaded before: the same dataset." : "Uploaded.";
        this.describe(ds);
        this.fieldset.dataset.state = "ready";
      } else {
        this.fieldset.dataset.state = "failed";
        this.status.textContent = "Refused.";
        showProblem(this.problem, problemFromText(xhr.status, xhr.statusText, xhr.responseText));
      }
    };
    xhr.onerror = () => {
      if (this.xhr !== xhr) return;
      this.xhr = null;
      this.again.hidden = false;
      this.fieldset.dataset.state = "failed";
      this.status.textContent = "Failed.";
      showProblem(this.problem, new Problem({ title: "The upload did not reach the server", detail: "Network error, or the connection was closed (a file over the server's size limit is cut short)." }));
    };
    xhr.send(file);
  }

  describe(ds) {
    const bits = [`${ds.name ? `“${ds.name}”: ` : ""}${ds.n} samples × ${ds.d} features`, ds.dtype];
    if (ds.weighted) bits.push("weighted");
    if (Array.isArray(ds.columns) && ds.columns.length) {
      const shown = ds.columns.slice(0, 8).join(", ");
      bits.push(`columns ${shown}${ds.columns.length > 8 ? `, … (${ds.columns.length})` : ""}`);
    }
    if (ds.bytes !== undefined) bits.push(fmtBytes(ds.bytes));
    this.summary.textContent = bits.join(", ");
  }

  async lookup() {
    const id = this.dsid.value.trim();
    this.summary.textContent = "";
    showProblem(this.problem, null);
    if (!id) return;
    try {
      this.describe(await request(`/v1/datasets/${encodeURIComponent(id)}`));
      this.fieldset.dataset.state = "ready";
    } catch (err) {
      showProblem(this.problem, err);
    }
  }

  value() {
    return this.dsid.value.trim();
  }
}

// ---------------------------------------------------------------- the estimate form

let slots = [];
let requestKnobs = [];
let configKnobs = [];

function buildForm() {
  const uploadOp = spec.paths?.["/v1/datasets"]?.post || {};
  const params = (uploadOp.parameters || []).filter((p) => p.in === "query");
  slots = [...document.querySelectorAll("fieldset.upload")].map((fs) => new UploadSlot(fs, params));

  const reqSchema = spec.components.schemas.EstimateRequest || { properties: {} };
  const names = Object.keys(reqSchema.properties || {}).filter((n) => !["source", "target", "config"].includes(n));
  names.sort((a, b) => {
    const ia = REQUEST_ORDER.indexOf(a);
    const ib = REQUEST_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
  });
  requestKnobs = names.map((n) => control("req", n, reqSchema.properties[n]));
  $("#request-knobs").append(...requestKnobs.map((k) => k.el));

  const configSchema = flatten(reqSchema.properties?.config || {});
  const configProps = configSchema.properties || {};
  configKnobs = MAIN_CONFIG_KNOBS.filter((n) => n in CONFIG_DEFAULTS || n in configProps).map((n) => {
    const d = CONFIG_DEFAULTS[n];
    const guess = typeof d === "boolean" ? "boolean" : Number.isInteger(d) ? "integer" : typeof d === "number" ? "number" : "string";
    return control("cfg", n, configProps[n] || { type: guess }, d);
  });
  $("#config-knobs").append(...configKnobs.map((k) => k.el));
  $("#config-defaults").textContent = JSON.stringify(CONFIG_DEFAULTS, null, 2);

  $("#estimate-form").addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
}

function changed(knob) {
  const v = knob.read();
  if (v === undefined) return undefined;
  if (knob.default !== undefined && JSON.stringify(v) === JSON.stringify(knob.default)) return undefined;
  return v;
}

async function submit() {
  const problemEl = $("#form-problem");
  showProblem(problemEl, null);
  const [source, target] = slots.map((s) => s.value());
  const missing = slots.filter((s) => !s.value()).map((s) => s.role);
  if (missing.length) {
    showProblem(problemEl, new Problem({ title: "Two datasets are needed", detail: `Upload a file (or paste a dataset id) for: ${missing.join(", ")}.` }));
    return;
  }
  const body = { source, target };
  for (const k of requestKnobs) {
    const v = changed(k);
    if (v !== undefined) body[k.name] = v;
  }
  let config = {};
  const extra = $("#config-extra").value.trim();
  if (extra) {
    try {
      config = JSON.parse(extra);
    } catch (err) {
      showProblem(problemEl, new Problem({ title: "Other training knobs: not JSON", detail: String(err.message || err) }));
      return;
    }
    if (!config || typeof config !== "object" || Array.isArray(config)) {
      showProblem(problemEl, new Problem({ title: "Other training knobs: expected a JSON object", detail: extra }));
      return;
    }
  }
  for (const k of configKnobs) {
    const v = changed(k);
    if (v !== undefined) config[k.name] = v;
  }
  if (Object.keys(config).length) body.config = config;
  const button = $("#submit");
  button.disabled = true;
  $("#submit-status").textContent = "Submitting…";
  try {
    const est = await request("/v1/estimates", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    $("#submit-status").textContent = "";
    navigate(est.id, est);
    loadHistory();
  } catch (err) {
    $("#submit-status").textContent = "";
    showProblem(problemEl, err);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- one estimate

let current = null; // {id, source: EventSource|null}

function estimateUrl(id) {
  return `${ROOT}/estimates/${encodeURIComponent(id)}`;
}

function navigate(id, est) {
  if (location.pathname !== estimateUrl(id)) history.pushState({ id }, "", estimateUrl(id));
  openEstimate(id, est);
}

function closeStream() {
  if (current && current.events) current.events.close();
  if (current) current.events = null;
}

async function openEstimate(id, est) {
  closeStream();
  current = { id, events: null };
  const section = $("#job");
  section.hidden = false;
  section.dataset.status = "loading";
  $("#job-id").textContent = id;
  const share = new URL(estimateUrl(id), location.href).href;
  $("#share-link").href = share;
  $("#share-link").textContent = share;
  $("#job-meta").textContent = "";
  $("#result").hidden = true;
  $("#job-progress").hidden = true;
  showProblem($("#job-problem"), null);
  markHistory();
  if (!est) {
    try {
      est = await request(`/v1/estimates/${encodeURIComponent(id)}`);
    } catch (err) {
      if (current.id !== id) return;
      section.dataset.status = "missing";
      showProblem($("#job-problem"), err);
      return;
    }
  }
  if (current.id !== id) return;
  showMeta(est);
  if (FINISHED.has(est.status)) showFinal(est);
  else follow(est);
  section.scrollIntoView({ block: "start" });
}

function showMeta(est) {
  const bits = [`${est.source} → ${est.target}`, `method ${est.method}`];
  if (est.config && est.config.steps) bits.push(`${est.config.steps} steps at most`);
  bits.push(`submitted ${fmtTime(est.created_at)}`);
  $("#job-meta").textContent = bits.join(" · ");
  $("#job").dataset.status = est.status;
}

function showProgress(est, progress) {
  const box = $("#job-progress");
  box.hidden = false;
  const bar = $("#job-bar");
  const phaseEl = $("#job-phase");
  if (!progress) {
    bar.removeAttribute("value");
    phaseEl.textContent = est.status === "queued" ? "Queued: waiting for a worker…" : "Starting…";
    return;
  }
  const total = progress.total_steps || 0;
  if (total > 0) {
    bar.max = total;
    bar.value = Math.min(progress.step || 0, total);
  } else {
    bar.removeAttribute("value");
  }
  const phase = progress.phase ? humanize(String(progress.phase)) : "Training";
  const bits = [`${phase}: step ${progress.step ?? "?"}${total ? ` of ${total}` : ""}`];
  if (progress.objective !== null && progress.objective !== undefined) bits.push(`objective ${fmt(progress.objective)}`);
  if (progress.elapsed_s !== undefined) bits.push(`${progress.elapsed_s.toFixed(1)} s`);
  phaseEl.textContent = bits.join(" · ");
}

function follow(est) {
  const id = est.id;
  $("#job").dataset.status = est.status;
  showProgress(est, est.progress);
  const cancel = $("#cancel");
  cancel.disabled = !!est.cancel_requested;
  cancel.textContent = est.cancel_requested ? "Cancelling…" : "Cancel";
  let ended = false;
  const events = openEvents(api(`/v1/estimates/${encodeURIComponent(id)}/events`), {
    event(kind, data) {
      if (current.id !== id) return;
      if (kind === "progress") {
        $("#job").dataset.status = "running";
        showProgress({ status: "running" }, JSON.parse(data));
      } else if (kind === "result" || kind === "error") {
        ended = true;
        events.close();
        showFinal(JSON.parse(data));
        loadHistory();
      }
    },
    lost() {
      // The stream is gone before the job's end: ask for the estimate again.
      if (!ended && current.id === id) setTimeout(() => current.id === id && openEstimate(id), 2000);
    },
  });
  current.events = events;
}

// Server-Sent Events read with fetch (EventSource sends no Authorization header).
function openEvents(url, handlers) {
  const ctrl = new AbortController();
  (async () => {
    let resp;
    try {
      resp = await fetch(url, { headers: { Accept: "text/event-stream", ...authHeaders() }, signal: ctrl.signal });
    } catch {
      if (!ctrl.signal.aborted) handlers.lost();
      return;
    }
    if (!resp.ok || !resp.body) {
      handlers.lost();
      return;
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) handlers.event(kind, data.join("\n"));
        }
      }
    } catch {
      // aborted, or the connection dropped
    }
    if (!ctrl.signal.aborted) handlers.lost();
  })();
  return { close: () => ctrl.abort() };
}

async function cancelCurrent() {
  if (!current) return;
  const id = current.id;
  const button = $("#cancel");
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    const est = await request(`/v1/estimates/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    if (current.id === id && FINISHED.has(est.status)) {
      closeStream();
      showFinal(est);
      loadHistory();
    }
  } catch (err) {
    showProblem($("#job-problem"), err);
    button.disabled = false;
    button.textContent = "Cancel";
  }
}

// A sentence for a result without a verdict (servers before the two-sample test).
function headline(r) {
  if (r.method === "exact" || (r.lower_bound === null && r.exact)) {
    return `The exact Wasserstein-1 distance between the two sample sets is ${fmt(r.exact ? r.exact.value : r.w1)}.`;
  }
  let s = `The Wasserstein-1 distance between the two sample sets is at least ${fmt(r.lower_bound ?? r.w1)} (certified lower bound)`;
  if (r.holdout) {
    const ci = fmtCI(r.holdout.ci95);
    s += `; between the distributions it is estimated at ${fmt(r.holdout.value)}${ci ? ` (95 % CI ${ci})` : ""}`;
  }
  return `${s}.`;
}

function figureRows(r) {
  const rows = [];
  const add = (label, value, note) => {
    if (value === undefined || value === null) return;
    rows.push([label, value, note]);
  };
  const v = r.verdict || null;
  if (v) {
    add("Verdict", v.differ === undefined ? null : v.differ ? "the distributions differ" : "no difference detected");
    add("p-value", typeof v.p_value === "number" ? fmt(v.p_value) : v.p_value, v.test ? `test: ${v.test}` : null);
    add("Significance level α", v.alpha, null);
    add("Permutations", v.permutations, null);
  }
  if (r.distance) add(`Distance (${r.distance.kind || "estimate"})`, fmt(r.distance.value), fmtCI(r.distance.ci95) ? `95 % CI ${fmtCI(r.distance.ci95)}` : null);
  add("Headline W1 (w1)", fmt(r.w1), r.method === "exact" ? "exact" : "certified lower bound");
  if (r.exact) add("Exact empirical W1", fmt(r.exact.value), `${r.exact.solver}, ${fmt(r.exact.seconds, 2)} s`);
  if (r.lower_bound !== null && r.lower_bound !== undefined) add("Empirical lower bound", fmt(r.lower_bound), "certified, on all samples");
  if (r.upper_bound !== null && r.upper_bound !== undefined) add("Empirical upper bound", fmt(r.upper_bound), "certified, on all samples");
  if (r.bracket_width !== null && r.bracket_width !== undefined) add("Bracket width", fmt(r.bracket_width), "upper − lower bound");
  if (r.relative_gap !== null && r.relative_gap !== undefined) add("Gap to exact", `${fmt(100 * r.relative_gap, 3)} %`, "(exact − lower bound) / exact");
  if (r.holdout) add("Held-out estimate", fmt(r.holdout.value), `95 % CI ${fmtCI(r.holdout.ci95)}; ${r.holdout.n_source} + ${r.holdout.n_target} held-out samples`);
  if (r.lipschitz_constant !== null && r.lipschitz_constant !== undefined) add("Lipschitz constant", fmt(r.lipschitz_constant), "certified bound of the potential");
  const g = r.diagnostics && r.diagnostics.grad_norm;
  if (g) add("|∇f| quantiles", `${fmt(g.q05, 3)} / ${fmt(g.q50, 3)} / ${fmt(g.q95, 3)}`, "5 % / 50 % / 95 %; well below 1 means under-fitting");
  const env = r.diagnostics && r.diagnostics.envelope;
  if (env) add("Potential", env.side ? `${env.side} envelope` : "network", env.side ? `over ${env.anchors} training samples; beat the network on the validation samples by more than their noise` : "no envelope beat it on the validation samples by more than their noise");
  add("Method", r.method, [r.device, r.steps !== undefined ? `${r.steps} steps` : null, r.seconds !== undefined ? `${fmt(r.seconds, 3)} s` : null].filter(Boolean).join(", "));
  return rows;
}

function showFinal(est) {
  const section = $("#job");
  section.dataset.status = est.status;
  showMeta(est);
  $("#job-progress").hidden = true;
  const result = $("#result");
  if (est.status !== "succeeded" || !est.result) {
    result.hidden = true;
    const err = est.error || {};
    const title = est.status === "cancelled" ? "Cancelled" : `Failed: ${err.title || "the job failed"}`;
    showProblem($("#job-problem"), new Problem({ ...err, title, status: undefined, detail: err.detail || (est.status === "cancelled" ? "The estimate was cancelled before it finished." : null) }));
    return;
  }
  showProblem($("#job-problem"), null);
  const r = est.result;
  const verdict = $("#verdict");
  verdict.textContent = (r.verdict && r.verdict.summary) || headline(r);
  verdict.dataset.differ = r.verdict && r.verdict.differ !== undefined ? String(r.verdict.differ) : "";
  const dist = $("#distance");
  dist.replaceChildren();
  const d = r.distance || (r.holdout ? { value: r.holdout.value, ci95: r.holdout.ci95, kind: "held-out estimate" } : { value: r.w1, kind: r.method === "exact" ? "exact" : "certified lower bound" });
  dist.append("Distance: ", h("strong", { text: fmt(d.value) }));
  if (fmtCI(d.ci95)) dist.append(`, 95 % CI ${fmtCI(d.ci95)}`);
  if (d.kind) dist.append(h("span", { class: "muted", text: ` (${d.kind})` }));

  const tbody = $("#figures tbody");
  tbody.replaceChildren(
    ...figureRows(r).map(([label, value, note]) =>
      h("tr", {}, h("th", { scope: "row", text: label }), h("td", { class: /^[-+0-9.,eE %/]+$/.test(String(value)) ? "num" : "word", text: String(value) }), h("td", { class: "muted", text: note || "" })),
    ),
  );

  const feats = Array.isArray(r.features) ? r.features : [];
  $("#features").hidden = feats.length === 0;
  $("#features tbody").replaceChildren(
    ...feats.map((f) =>
      h(
        "tr",
        {},
        h("th", { scope: "row", text: f.name ?? `x${f.index}` }),
        h("td", { class: "num", text: fmt(f.marginal_w1) }),
        h("td", { class: "num", text: typeof f.attribution === "number" ? fmt(f.attribution) : (f.attribution ?? "—") }),
        h("td", { text: typeof f.direction === "number" ? (f.direction > 0 ? `+ (${fmt(f.direction)})` : `− (${fmt(f.direction)})`) : (f.direction ?? "—") }),
      ),
    ),
  );

  const fig = $("#report");
  const img = $("#report-img");
  const src = api(`/v1/estimates/${encodeURIComponent(est.id)}/report.png`);
  fig.hidden = false;
  fig.dataset.state = "loading";
  img.alt = `Report of estimate ${est.id}: the fitted potential over both sample sets`;
  img.onload = () => (fig.dataset.state = "loaded");
  img.onerror = () => {
    fig.dataset.state = "none";
    fig.hidden = true;
  };
  $("#report-link").href = src;
  if (!apiKey) {
    img.src = src;
  } else {
    // An <img> sends no Authorization header: fetch the picture, show it from memory.
    fetch(src, { headers: authHeaders() })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((blob) => {
        const link = $("#report-link");
        if (link.dataset.blob) URL.revokeObjectURL(link.dataset.blob);
        const url = URL.createObjectURL(blob);
        link.dataset.blob = url;
        link.href = url;
        img.src = url;
      })
      .catch(() => img.onerror());
  }
  $("#raw").textContent = JSON.stringify(r, null, 2);
  result.hidden = false;
}

// ---------------------------------------------------------------- past estimates

let historyOffset = 0;

function resultValue(est) {
  const r = est.result;
  if (!r) return "—";
  if (r.distance) return fmt(r.distance.value);
  return fmt(r.w1);
}

async function loadHistory(offset = historyOffset) {
  const problemEl = $("#history-problem");
  try {
    const page = await request(`/v1/estimates?limit=${HISTORY_PAGE}&offset=${offset}`);
    historyOffset = offset;
    showProblem(problemEl, null);
    const rows = page.items.map((est) => {
      const link = h("a", { href: estimateUrl(est.id), "data-id": est.id }, h("code", { text: est.id }));
      return h(
        "tr",
        { "data-id": est.id },
        h("td", {}, link),
        h("td", {}, h("span", { class: `status status-${est.status}`, text: est.status })),
        h("td", { text: est.method }),
        h("td", { class: "num", text: resultValue(est) }),
        h("td", { text: fmtTime(est.created_at) }),
      );
    });
    if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No estimates yet." })));
    $("#history-rows").replaceChildren(...rows);
    const end = offset + page.items.length;
    $("#history-range").textContent = page.total ? `${offset + 1}–${end} of ${page.total}` : "";
    $("#history-newer").disabled = offset === 0;
    $("#history-older").disabled = page.next_offset === null || page.next_offset === undefined;
    markHistory();
  } catch (err) {
    showProblem(problemEl, err);
  }
}

function markHistory() {
  for (const tr of document.querySelectorAll("#history-rows tr[data-id]")) {
    if (current && tr.dataset.id === current.id) tr.setAttribute("aria-current", "true");
    else tr.removeAttribute("aria-current");
  }
}

// ---------------------------------------------------------------- routing and start

function route() {
  const path = location.pathname.slice(ROOT.length);
  const m = path.match(/^\/estimates\/([^/]+)\/?$/);
  if (m) {
    openEstimate(decodeURIComponent(m[1]));
  } else {
    closeStream();
    current = null;
    $("#job").hidden = true;
    markHistory();
  }
}

function setupKey() {
  const form = $("#key-form");
  if (!boot.auth) return;
  form.hidden = false;
  const input = $("#api-key");
  input.value = apiKey;
  $("#key-state").textContent = apiKey ? "key set" : "no key yet";
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = input.value.trim();
    if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
    else sessionStorage.removeItem(KEY_STORE);
    $("#key-state").textContent = apiKey ? "key set" : "no key yet";
    loadHistory();
    route();
  });
  if (!apiKey) input.focus();
}

async function start() {
  setupKey();
  $("#cancel").addEventListener("click", cancelCurrent);
  $("#history-newer").addEventListener("click", () => loadHistory(Math.max(0, historyOffset - HISTORY_PAGE)));
  $("#history-older").addEventListener("click", () => loadHistory(historyOffset + HISTORY_PAGE));
  $("#history-refresh").addEventListener("click", () => loadHistory());
  $("#history-rows").addEventListener("click", (e) => {
    const a = e.target.closest("a[data-id]");
    if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(a.dataset.id);
  });
  window.addEventListener("popstate", route);
  try {
    spec = await request("/openapi.json");
  } catch (err) {
    showProblem($("#form-problem"), err);
    spec = { paths: {}, components: { schemas: {} } };
  }
  buildForm();
  document.body.dataset.ready = "true";
  route();
  loadHistory(0);
}

// For the browser console and the browser tests: render an estimate as the page would.
window.lipwass = { showFinal, openEstimate };

start();
