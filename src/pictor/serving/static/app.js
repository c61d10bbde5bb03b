// pictor web page: submit a generation, follow it live (server-sent events with previews),
// show the results with their provenance record and a download link. Plain JS, no build step.
// Every API call goes through fetch() so the bearer token (if the server wants one) travels in
// the Authorization header: EventSource and <img src> cannot send headers, so events are read
// from a fetch stream and images are fetched as blobs.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "pictor-token";

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  return fetch(path, Object.assign({}, options, { headers }));
}

function say(text, isError = false) {
  const m = $("message");
  m.textContent = text;
  m.classList.toggle("error", isError);
}

async function errorText(res) {
  try {
    const body = await res.json();
    const d = body.detail;
    if (Array.isArray(d)) return d.map((x) => (typeof x === "string" ? x : x.msg)).join("; ");
    return String(d);
  } catch (e) { return res.status + " " + res.statusText; }
}

// Defaults fill the form once; a later reload (a new token) keeps what the user has set.
let defaultsApplied = false;
// GET /v1/models: every served model, the first the server's default
let models = [];

function chosenModel() {
  return models.find((m) => m.name === $("model").value) || models[0];
}

// the header and the form's choices and limits follow the chosen model
function showModel() {
  const model = chosenModel();
  $("model-info").textContent =
    `${model.name} · ${model.image_size}×${model.image_size} · sha256 ${model.sha256.slice(0, 12)}…`;
  const select = $("sampler");
  const chosen = defaultsApplied ? select.value : model.defaults.sampler;
  select.replaceChildren();
  for (const name of model.samplers) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = name;
    if (name === chosen) opt.selected = true;
    select.appendChild(opt);
  }
  $("n").max = model.limits.n;
  $("steps").max = model.limits.steps;
  if (!defaultsApplied) {
    $("steps").value = model.defaults.steps;
    $("guidance").value = model.defaults.guidance;
    defaultsApplied = true;
  }
  $("prompt").maxLength = $("negative_prompt").maxLength = model.limits.prompt_chars;
}

async function loadModels() {
  const res = await api("/v1/models");
  if (res.status === 401) {
    $("token-box").open = true;
    $("model-info").textContent = "this server needs an access token";
    say("Enter the access token to use this server.", true);
    return;
  }
  if (res.status === 503) {  // the server has started but its model is still loading
    $("model-info").textContent = "the model is loading…";
    say("The model is loading; this page retries by itself.");
    const seconds = Number(res.headers.get("Retry-After")) || 2;
    setTimeout(loadModels, 1000 * Math.min(seconds, 10));
    return;
  }
  if (!res.ok) { say("could not load the model list: " + (await errorText(res)), true); return; }
  models = (await res.json()).models;
  const picker = $("model");
  const kept = picker.value;  // a reload (a new token) keeps the user's choice
  picker.replaceChildren();
  for (const model of models) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = model.name;
    if (model.name === kept) opt.selected = true;
    picker.appendChild(opt);
  }
  showModel();
  say("");
}

// ---------------------------------------------------------------- server-sent events over fetch
async function followEvents(jobId, onEvent) {
  const res = await api(`/v1/generations/${jobId}/events`);
  if (!res.ok || !res.body) throw new Error("events: " + res.status);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) {
        const stop = onEvent(event, JSON.parse(data));
        if (stop) { reader.cancel(); return; }
      }
    }
  }
}

// ---------------------------------------------------------------- one job card
function recordRows(record) {
  return [
    ["prompt", record.prompt || "(unconditional)"],
    ["negative", record.negative_prompt || "—"],
    ["seed", record.seed],
    ["sampler", `${record.sampler}, ${record.num_steps} steps`],
    ["guidance", record.guidance_scale],
    ["layout guidance", record.extra && record.extra.layout ? "on" : "off"],
    ["model", `${record.model_name} (${record.model_sha256.slice(0, 12)}…)`],
    ["created", record.created],
    ["source", record.digital_source_type.split("/").pop()],
    ["software", record.software],
  ];
}

async function showImage(container, image) {
  const res = await api(image.url);
  if (!res.ok) throw new Error("image: " + res.status);
  const blobUrl = URL.createObjectURL(await res.blob());
  const figure = document.createElement("figure");
  figure.className = "result";
  figure.dataset.name = image.name;
  figure.dataset.seed = image.seed;
  figure.dataset.record = JSON.stringify(image.record);
  const img = document.createElement("img");
  img.src = blobUrl;
  img.alt = `AI-generated image by ${image.record.model_name}: ${image.record.prompt} ` +
    `(seed ${image.seed})`;
  const caption = document.createElement("figcaption");
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = "AI-generated";
  const dl = document.createElement("dl");
  for (const [key, value] of recordRows(image.record)) {
    const dt = document.createElement("dt"); dt.textContent = key;
    const dd = document.createElement("dd"); dd.textContent = String(value);
    dd.dataset.field = key;
    dl.append(dt, dd);
  }
  const link = document.createElement("a");
  link.className = "download";
  link.href = blobUrl;
  link.download = image.name;
  link.textContent = "Download PNG (with provenance)";
  caption.append(badge, dl, link);
  figure.append(img, caption);
  container.appendChild(figure);
  await img.decode().catch(() => {});
}

function showPreviews(container, urls) {
  container.replaceChildren(...urls.map((url) => {
    const img = document.createElement("img");
    img.className = "preview";
    img.alt = "preview of the image being generated";
    img.src = url;
    return img;
  }));
}

async function runJob(jobId, prompt, model) {
  const card = $("job-template").content.firstElementChild.cloneNode(true);
  card.dataset.jobId = jobId;
  card.dataset.model = model;
  card.querySelector(".job-prompt").textContent = prompt || "(unconditional)";
  card.querySelector(".job-model").textContent = "by " + model;
  const status = card.querySelector(".job-status");
  const bar = card.querySelector(".job-progress");
  const images = card.querySelector(".job-images");
  const cancel = card.querySelector(".job-cancel");
  $("gallery").prepend(card);
  status.textContent = "queued";
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const res = await api(`/v1/generations/${jobId}`, { method: "DELETE" });
    if (!res.ok) status.textContent = "cannot cancel: " + (await errorText(res));
  });

  let final = null;
  try {
    await followEvents(jobId, (event, data) => {
      if (event === "status") {
        status.textContent = data.status === "queued" && data.queue_position != null
          ? `queued (position ${data.queue_position + 1})` : data.status;
      } else if (event === "progress") {
        bar.value = data.progress;
        status.textContent = `step ${data.step}/${data.num_steps}`;
      } else if (event === "preview") {
        showPreviews(images, data.images);
      } else if (event === "done") {
        final = data.status;
        return true;
      }
      return false;
    });
  } catch (e) {
    status.textContent = "lost the live stream; checking…";
  }
  // the job's final state (also the fallback when the stream broke)
  let job;
  for (;;) {
    const res = await api(`/v1/generations/${jobId}`);
    if (!res.ok) { status.textContent = "error: " + (await errorText(res)); return; }
    job = await res.json();
    if (["succeeded", "failed", "cancelled"].includes(job.status)) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  cancel.remove();
  card.dataset.status = job.status;
  if (job.status !== "succeeded") {
    status.textContent = job.status + (job.error ? ": " + job.error : "");
    images.replaceChildren();
    return;
  }
  bar.value = 1;
  images.replaceChildren();
  for (const image of job.images) await showImage(images, image);
  const secs = job.finished_at - job.started_at;
  status.textContent = `done in ${secs.toFixed(1)} s` +
    (job.batch_num_images > job.images.length ? ` (batched with others: ${job.batch_num_images} images)` : "");
  return final;
}

// ---------------------------------------------------------------- the form
async function submit(event) {
  event.preventDefault();
  const body = {
    model: chosenModel().name,
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    n: parseInt($("n").value, 10),
    steps: parseInt($("steps").value, 10),
    guidance: parseFloat($("guidance").value),
    sampler: $("sampler").value,
    layout: $("layout").checked,
  };
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  const button = $("generate");
  button.disabled = true;
  try {
    const res = await api("/v1/generations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (res.status === 429) {
      say(`The server is busy; try again in ${res.headers.get("Retry-After") || "a few"} s.`, true);
      return;
    }
    if (res.status === 401) { $("token-box").open = true; say("Wrong or missing access token.", true); return; }
    if (!res.ok) { say(await errorText(res), true); return; }
    const accepted = await res.json();
    say("");
    runJob(accepted.id, body.prompt, body.model);
  } catch (e) {
    say("request failed: " + e, true);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token").addEventListener("change", () => {
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    loadModels();
  });
  $("generate-form").addEventListener("submit", submit);
  $("model").addEventListener("change", showModel);
  loadModels();
});
