"use strict";
// The D-Gate playground: one form over the public API, no framework, no build step.
//
// Generations POST /v1/images/generations and edits POST /v1/images/edits (multipart) with
// `stream: true`, and read the Server-Sent Events as they arrive: partial images (and progress
// events, when a server sends them) fill a progress bar, one `*.completed` event per image ends it.
// When the stream is refused with a 400 (a server or a model without streaming) the page asks again
// without streaming and reads the JSON ImagesResponse. Every request carries an explicit seed (a
// random one when the field is empty), so the seed shown can always reproduce the images.
//
// A server with API keys answers 401 without one: the key field's value goes in an `Authorization:
// Bearer` header of every request, and is kept in this tab's sessionStorage (never in a URL, never in
// localStorage), so a reload keeps it and closing the tab forgets it.

const $ = (id) => document.getElementById(id);
const app = $("app");
const SIZES = ["256x256", "512x512", "768x768", "1024x1024"];
let models = []; // the image models of /v1/models
let controller = null; // the running request's AbortController
const KEY_STORAGE = "dgate.apiKey";

class RequestError extends Error {
  constructor(message, param) {
    super(message);
    this.param = param;
  }
}

function setState(state) {
  app.dataset.state = state;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function currentModel() {
  return models.find((m) => m.id === $("model").value);
}

function isEdit() {
  return $("mode-edit").checked;
}

// OpenAI's error body ({"error": {"message", "param", ...}}), else the status line and text.
async function responseError(response) {
  const text = await response.text().catch(() => "");
  try {
    const error = JSON.parse(text).error;
    if (error && error.message) return new RequestError(error.message, error.param);
  } catch {
    // not JSON: the text itself
  }
  const detail = text ? `: ${text.slice(0, 300)}` : "";
  return new RequestError(`${response.status} ${response.statusText}${detail}`);
}

// --- the API key -----------------------------------------------------------------------------------

function withKey(headers) {
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

function session(action) {
  try {
    return action(window.sessionStorage);
  } catch {
    return null; // storage disabled: the key lives in the field only
  }
}

function onKeyChange() {
  const key = $("api-key").value.trim();
  session((storage) => (key ? storage.setItem(KEY_STORAGE, key) : storage.removeItem(KEY_STORAGE)));
  if (controller) return;
  showError("");
  setState("loading");
  loadModels();
}

// --- models ----------------------------------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: withKey({ Accept: "application/json" }) });
    if (response.status === 401) {
      const error = await responseError(response);
      const asked = $("api-key").value.trim() ? error.message.replace(/\.$/, "") : "This server needs an API key";
      throw new RequestError(`${asked}: enter the key in the API key field above.`);
    }
    if (!response.ok) throw await responseError(response);
    const body = await response.json();
    models = (body.data || []).filter((m) => !m.task || m.task === "image");
  } catch (error) {
    models = [];
    select.replaceChildren(new Option("No models", ""));
    select.disabled = true;
    $("generate").disabled = true;
    showError(`Could not list the models: ${error.message}`);
    setState("error");
    return;
  }
  if (!models.length) {
    select.replaceChildren(new Option("No image model is loaded", ""));
    setStatus("No image model is loaded yet: reload the page once Triton has one.");
    setState("idle");
    return;
  }
  select.replaceChildren(...models.map((m) => new Option(m.id, m.id)));
  select.disabled = false;
  $("generate").disabled = false;
  onModelChange();
  setState("idle");
}

function parseSize(text) {
  const match = /^(\d+)x(\d+)$/.exec(text || "");
  return match ? [Number(match[1]), Number(match[2])] : null;
}

function sizeOptions(m) {
  const max = parseSize(m.max_size);
  const fits = (size) => {
    const wh = parseSize(size);
    if (!wh || !max) return Boolean(wh);
    const multiple = m.size_multiple || 1;
    return wh.every((v, i) => v <= max[i] && v >= (m.min_size || 1) && v % multiple === 0);
  };
  return [...new Set([m.default_size, ...SIZES.filter(fits), m.max_size].filter(Boolean))];
}

function onModelChange() {
  const m = currentModel();
  if (!m) return;
  $("size").placeholder = m.default_size ? `auto (${m.default_size})` : "auto";
  $("size-options").replaceChildren(...["auto", ...sizeOptions(m)].map((s) => new Option(s, s)));
  if (m.max_images) {
    $("n").max = m.max_images;
    if (Number($("n").value) > m.max_images) $("n").value = m.max_images;
  }
  $("steps").placeholder = m.default_steps ? `default (${m.default_steps})` : "default";
  if (m.max_steps) $("steps").max = m.max_steps;
  $("guidance").placeholder = m.default_guidance_scale != null ? `default (${m.default_guidance_scale})` : "default";
  if (m.max_guidance_scale) $("guidance").max = m.max_guidance_scale;
  const facts = [m.family, m.precision, m.default_size && `${m.default_size} by default`,
    m.max_size && `up to ${m.max_size}`, m.max_images && `≤ ${m.max_images} images`];
  if (m.edits === false) facts.push("no edits");
  // A pipeline that says it cannot stream previews still streams its final images.
  $("partial-images").disabled = m.streams === false;
  if (m.streams === false) $("partial-images").value = "0";
  $("model-info").textContent = facts.filter(Boolean).join(" · ");
}

// --- the request -----------------------------------------------------------------------------------

// The form's filled fields as API fields; empty ones are left out so the server's defaults apply.
function readFields() {
  const fields = { model: $("model").value, prompt: $("prompt").value };
  const n = parseInt($("n").value, 10);
  if (n) fields.n = n;
  const size = $("size").value.trim();
  if (size) fields.size = size;
  const steps = parseInt($("steps").value, 10);
  if (steps) fields.num_inference_steps = steps;
  const guidance = parseFloat($("guidance").value);
  if (!Number.isNaN(guidance)) fields.guidance_scale = guidance;
  const negative = $("negative-prompt").value.trim();
  if (negative) fields.negative_prompt = negative;
  if (isEdit()) {
    const strength = parseFloat($("strength").value);
    if (!Number.isNaN(strength)) fields.strength = strength;
  }
  return fields;
}

function randomSeed() {
  return String(crypto.getRandomValues(new Uint32Array(1))[0]);
}

// Seeds go up to 2^63 - 1, past JavaScript's exact integers: the seed stays a string of digits and is
// written into the JSON text as a number.
function jsonBody(fields, seed, stream) {
  const text = JSON.stringify(stream ? { ...fields, stream: true, partial_images: stream.partials } : fields);
  return `${text.slice(0, -1)},"seed":${seed}}`;
}

function formBody(fields, seed, stream) {
  const form = new FormData();
  form.append("image", $("edit-image").files[0]);
  if ($("edit-mask").files.length) form.append("mask", $("edit-mask").files[0]);
  for (const [key, value] of Object.entries(fields)) form.append(key, String(value));
  form.append("seed", seed);
  if (stream) {
    form.append("stream", "true");
    form.append("partial_images", String(stream.partials));
  }
  return form;
}

function post(edit, fields, seed, stream, signal) {
  const headers = withKey({ Accept: stream ? "text/event-stream" : "application/json" });
  if (edit) {
    return fetch("/v1/images/edits", { method: "POST", body: formBody(fields, seed, stream), headers, signal });
  }
  headers["Content-Type"] = "application/json";
  return fetch("/v1/images/generations", { method: "POST", body: jsonBody(fields, seed, stream), headers, signal });
}

// --- server-sent events ----------------------------------------------------------------------------

function parseEvent(block) {
  const data = [];
  let name = "";
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    else if (line.startsWith("event:")) name = line.slice(6).trim();
  }
  const text = data.join("\n");
  if (!text || text === "[DONE]") return null;
  const event = JSON.parse(text);
  if (!event.type && name) event.type = name;
  return event;
}

async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let match;
    while ((match = /\r?\n\r?\n/.exec(buffer))) {
      const event = parseEvent(buffer.slice(0, match.index));
      buffer = buffer.slice(match.index + match[0].length);
      if (event) yield event;
    }
  }
  const last = parseEvent(buffer);
  if (last) yield last;
}

// --- the output ------------------------------------------------------------------------------------

class Gallery {
  constructor(n, partials, seed) {
    this.n = n;
    this.partials = partials;
    this.seed = seed;
    this.expected = n * (partials + 1); // events that end the request: k partials and 1 image each
    this.received = 0;
    this.partialCounts = new Map(); // partial_image_index -> partial images seen with it
    this.completed = 0;
    this.figures = [];
    $("results").replaceChildren();
    $("results").dataset.partials = "0";
    $("results").dataset.images = "0";
    delete $("results").dataset.transport;
  }

  figure(index) {
    while (this.figures.length <= index) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.alt = `Image ${this.figures.length + 1}: waiting`;
      const caption = document.createElement("figcaption");
      caption.textContent = "waiting…";
      figure.append(img, caption);
      $("results").append(figure);
      this.figures.push(figure);
    }
    return this.figures[index];
  }

  placeholders() {
    for (let i = 0; i < this.n; i++) this.figure(i);
  }

  setProgress(fraction) {
    const bar = $("progress");
    bar.value = Math.max(0, Math.min(1, fraction));
    bar.textContent = `${Math.round(bar.value * 100)} %`;
  }

  count() {
    this.received += 1;
    this.setProgress(this.received / this.expected);
  }

  partial(event) {
    const step = event.partial_image_index ?? 0;
    const seen = this.partialCounts.get(step) || 0;
    this.partialCounts.set(step, seen + 1);
    const index = event.index ?? event.image_index ?? seen;
    const figure = this.figure(index);
    const img = figure.querySelector("img");
    if (img.classList.contains("final")) return;
    img.className = "partial";
    img.src = dataUrl(event);
    img.alt = `Image ${index + 1}: partial image ${step + 1}`;
    figure.querySelector("figcaption").textContent = `partial ${step + 1} of ${this.partials || "?"}`;
    $("results").dataset.partials = String(Number($("results").dataset.partials) + 1);
    this.count();
  }

  image(b64, format, index, seed) {
    const figure = this.figure(index ?? this.completed);
    this.completed += 1;
    const img = figure.querySelector("img");
    img.className = "final";
    img.src = dataUrl({ b64_json: b64, output_format: format });
    img.alt = `Image ${this.figures.indexOf(figure) + 1}, seed ${seed}`;
    const link = document.createElement("a");
    link.href = img.src;
    link.download = `dgate-${seed}-${this.figures.indexOf(figure) + 1}.${extension(format)}`;
    link.textContent = "download";
    const caption = figure.querySelector("figcaption");
    caption.replaceChildren(`image ${this.figures.indexOf(figure) + 1} · seed ${seed} · `, link);
    $("results").dataset.images = String(this.completed);
  }

  progressEvent(event) {
    if (typeof event.progress === "number") this.setProgress(event.progress);
    else if (event.total) this.setProgress(event.step / event.total);
  }
}

function extension(format) {
  return format === "jpeg" ? "jpg" : format || "png";
}

function dataUrl(event) {
  return `data:image/${event.output_format || "png"};base64,${event.b64_json}`;
}

// The seed the server reports, unless it is the one sent (JSON numbers past 2^53 lose digits).
function reportedSeed(sent, reported) {
  return reported == null || Number(reported) === Number(sent) ? sent : String(reported);
}

async function readStream(response, gallery) {
  let seed = gallery.seed;
  for await (const event of readEvents(response)) {
    const type = event.type || "";
    if (type === "error" || type.endsWith(".error") || (event.error && !event.b64_json)) {
      throw new RequestError(event.error?.message || event.message || "the server reported an error");
    }
    if (type.endsWith("partial_image")) {
      gallery.partial(event);
    } else if (type.endsWith("completed")) {
      seed = reportedSeed(gallery.seed, event.seed);
      gallery.image(event.b64_json, event.output_format, event.index ?? event.image_index, seed);
      gallery.count();
    } else if (type.endsWith("progress") || event.total) {
      gallery.progressEvent(event);
    }
  }
  if (!gallery.completed) throw new RequestError("the stream ended before any image arrived");
  return seed;
}

async function readJson(response, gallery) {
  const body = await response.json();
  const seed = reportedSeed(gallery.seed, body.seed);
  (body.data || []).forEach((item, i) => gallery.image(item.b64_json, body.output_format, i, seed));
  if (!gallery.completed) throw new RequestError("the response has no images");
  gallery.setProgress(1);
  return seed;
}

// --- the form --------------------------------------------------------------------------------------

function running(on) {
  $("generate").disabled = on || !models.length;
  $("cancel").hidden = !on;
  $("model").disabled = on;
  $("progress").hidden = false;
  if (on) $("progress").removeAttribute("value"); // indeterminate until the first event
}

async function submit(event) {
  event.preventDefault();
  if (controller) return;
  const edit = isEdit();
  const fields = readFields();
  if (!fields.model) return showError("Pick a model first.");
  if (edit && !$("edit-image").files.length) return showError("Choose an image to edit.");
  const seedText = $("seed").value.trim();
  if (seedText && !/^\d+$/.test(seedText)) return showError("The seed is a whole number ≥ 0.");
  const seed = seedText ? String(BigInt(seedText)) : randomSeed();
  const partials = parseInt($("partial-images").value, 10) || 0;
  const n = fields.n || 1;

  showError("");
  $("seed-out").hidden = true;
  const gallery = new Gallery(n, partials, seed);
  gallery.placeholders();
  running(true);
  setState("running");
  const what = `${n} image${n > 1 ? "s" : ""}`;
  setStatus(`${edit ? "Editing" : "Generating"} ${what} with ${fields.model}, seed ${seed}…`);
  controller = new AbortController();
  const started = performance.now();
  try {
    let response = await post(edit, fields, seed, { partials }, controller.signal);
    if (response.status === 400) {
      // Streaming refused (a server or model without it): the same request, answered as one JSON body.
      await response.body?.cancel();
      response = await post(edit, fields, seed, null, controller.signal);
    }
    if (!response.ok) throw await responseError(response);
    const streamed = (response.headers.get("content-type") || "").includes("text/event-stream");
    $("results").dataset.transport = streamed ? "sse" : "json";
    const shown = streamed ? await readStream(response, gallery) : await readJson(response, gallery);
    gallery.setProgress(1);
    $("seed-value").textContent = shown;
    $("seed-out").hidden = false;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(`${edit ? "Edited" : "Generated"} ${gallery.completed} image${gallery.completed > 1 ? "s" : ""} `
      + `in ${seconds} s${streamed ? "" : " (without streaming)"}.`);
    setState("done");
  } catch (error) {
    $("results").querySelectorAll("figure:not(:has(img.final))").forEach((f) => f.remove());
    if (error.name === "AbortError") {
      setStatus("Cancelled.");
      setState("idle");
    } else {
      showError(error.message);
      setStatus("Failed.");
      setState("error");
    }
  } finally {
    controller = null;
    running(false);
    $("progress").hidden = app.dataset.state !== "done";
  }
}

function onModeChange() {
  const edit = isEdit();
  $("edit-fields").hidden = !edit;
  $("edit-image").required = edit;
  $("generate").textContent = edit ? "Edit" : "Generate";
}

function previewUploads() {
  const thumbs = [];
  for (const [id, label] of [["edit-image", "image"], ["edit-mask", "mask"]]) {
    const file = $(id).files[0];
    if (!file) continue;
    const img = document.createElement("img");
    img.src = URL.createObjectURL(file);
    img.alt = `The ${label} to upload`;
    img.onload = () => URL.revokeObjectURL(img.src);
    thumbs.push(img);
  }
  $("edit-preview").replaceChildren(...thumbs);
}

$("form").addEventListener("submit", submit);
$("api-key").value = session((storage) => storage.getItem(KEY_STORAGE)) || "";
$("api-key").addEventListener("change", onKeyChange);
$("model").addEventListener("change", onModelChange);
$("mode-generate").addEventListener("change", onModeChange);
$("mode-edit").addEventListener("change", onModeChange);
$("edit-image").addEventListener("change", previewUploads);
$("edit-mask").addEventListener("change", previewUploads);
$("cancel").addEventListener("click", () => controller?.abort());
$("reuse-seed").addEventListener("click", () => {
  $("seed").value = $("seed-value").textContent;
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("form").requestSubmit();
});
onModeChange();
loadModels();
