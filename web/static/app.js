// The demo page: talks to the JSON API of web/app.py. Generation uses ?stream=true, whose answer is one
// JSON event per line (queued, started, progress, image, done | error); closing the request (Stop, or
// leaving the page) cancels the work on the server.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let cardCount = 0;

async function readError(response) {
  try {
    return (await response.json()).error || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// Put new cards at the top of the gallery, in their own order.
function showCards(cards) {
  const gallery = $("gallery");
  const top = gallery.firstChild;
  cards.forEach((card) => gallery.insertBefore(card, top));
  return cards;
}

// POST and call onEvent for each JSON line of the streamed answer; throws Error(message) on a refusal.
async function streamEvents(url, init, onEvent) {
  const response = await fetch(url, init);
  if (!response.ok) throw new Error(await readError(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      if (!line.trim()) continue;
      const event = JSON.parse(line);
      if (event.event === "error") throw new Error(event.error);
      onEvent(event);
    }
  }
}

function numberOrNull(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function newCard(title, prompt) {
  const card = $("card-template").content.firstElementChild.cloneNode(true);
  cardCount += 1;
  card.dataset.prompt = prompt;
  card.classList.add("pending");
  card.querySelector(".card-title").textContent = title;
  card.querySelector(".download").hidden = true;
  const magnify = card.querySelector(".magnify");
  magnify.hidden = true;
  magnify.addEventListener("click", () => superResolution(card));
  return card;
}

// Which candidate post-selection kept, and its score (none without post-selection).
function noteCard(card, event, candidates) {
  if (event.candidate === undefined) return;
  const note = card.querySelector(".card-note");
  note.textContent = `kept candidate ${event.candidate + 1} of ${candidates} · score ${event.score.toFixed(2)}`;
  note.hidden = false;
}

function fillCard(card, base64) {
  const url = `data:image/png;base64,${base64}`;
  const img = card.querySelector("img");
  img.src = url;
  img.alt = card.dataset.prompt;
  const link = card.querySelector(".download");
  link.href = url;
  link.download = `cogview-${cardCount}.png`;
  link.hidden = false;
  card.dataset.png = base64;
  card.querySelector(".magnify").hidden = !info.tasks["super-resolution"];
  card.classList.remove("pending");
}

function showProgress(bar, label, event) {
  bar.max = event.total;
  bar.value = event.done;
  label.textContent = `${event.done} / ${event.total} tokens`;
}

let running = null;

async function generate(submit) {
  submit.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  const body = {
    prompt,
    num_images: numberOrNull("num-images") ?? 1,
    temperature: numberOrNull("temperature"),
    top_k: numberOrNull("top-k"),
    seed: numberOrNull("seed"),
  };
  if (info.options.post_select) body.post_select = numberOrNull("post-select") ?? 1;
  if (info.options.guidance_scale) body.guidance_scale = numberOrNull("guidance-scale") ?? 1;
  const cards = showCards(
    Array.from({ length: body.num_images }, (_, i) => newCard(`${prompt} #${i + 1}`, prompt)),
  );
  const bar = $("t2i-progress");
  const label = $("t2i-status");
  running = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  label.textContent = "sending…";
  bar.value = 0;
  try {
    await streamEvents(
      "/api/text2image?stream=true",
      {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: running.signal,
      },
      (event) => {
        if (event.event === "queued") label.textContent = `queued (${event.waiting} waiting)`;
        else if (event.event === "progress") showProgress(bar, label, event);
        else if (event.event === "image") {
          fillCard(cards[event.index], event.png);
          noteCard(cards[event.index], event, body.post_select);
        }
        else if (event.event === "done") label.textContent = `done in ${event.seconds} s`;
      },
    );
  } catch (error) {
    label.textContent = error.name === "AbortError" ? "stopped" : `error: ${error.message}`;
    cards.filter((card) => card.classList.contains("pending")).forEach((card) => card.remove());
  } finally {
    running = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function superResolution(source) {
  const [card] = showCards([newCard(`×2: ${source.dataset.prompt}`, source.dataset.prompt)]);
  const title = card.querySelector(".card-title");
  const form = new FormData();
  form.append("prompt", source.dataset.prompt);
  form.append("image", pngBlob(source.dataset.png), "image.png");
  try {
    await streamEvents("/api/super-resolution?stream=true", { method: "POST", body: form }, (event) => {
      if (event.event === "progress") title.textContent = `×2: ${event.done} / ${event.total} tokens`;
      else if (event.event === "image") fillCard(card, event.png);
      else if (event.event === "done") title.textContent = `×2: ${source.dataset.prompt}`;
    });
  } catch (error) {
    title.textContent = `super-resolution failed: ${error.message}`;
  }
}

async function postForm(url, form, label) {
  label.textContent = "working…";
  const response = await fetch(url, { method: "POST", body: form });
  if (!response.ok) throw new Error(await readError(response));
  const result = await response.json();
  label.textContent = `done in ${result.seconds} s`;
  return result;
}

async function caption(submit) {
  submit.preventDefault();
  const form = new FormData();
  form.append("image", $("i2t-image").files[0]);
  form.append("num_captions", $("num-captions").value || "1");
  const list = $("captions");
  list.replaceChildren();
  try {
    const result = await postForm("/api/image2text", form, $("i2t-status"));
    for (const text of result.captions) {
      const item = document.createElement("li");
      item.textContent = text;
      list.append(item);
    }
  } catch (error) {
    $("i2t-status").textContent = `error: ${error.message}`;
  }
}

async function rank(submit) {
  submit.preventDefault();
  const files = Array.from($("ps-images").files);
  const form = new FormData();
  form.append("caption", $("ps-caption").value);
  files.forEach((file) => form.append("images", file));
  const list = $("ranking");
  list.replaceChildren();
  try {
    const result = await postForm("/api/post-selection", form, $("ps-status"));
    for (const index of result.ranking) {
      const item = document.createElement("li");
      const img = document.createElement("img");
      img.src = URL.createObjectURL(files[index]);
      img.alt = files[index].name;
      const text = document.createElement("span");
      text.textContent = `${files[index].name}: ${result.scores[index].toFixed(3)}`;
      item.append(img, text);
      list.append(item);
    }
  } catch (error) {
    $("ps-status").textContent = `error: ${error.message}`;
  }
}

async function start() {
  const response = await fetch("/api/info");
  info = await response.json();
  const ready = Object.entries(info.tasks).filter(([, on]) => on).map(([task]) => task);
  $("server-line").textContent = `${ready.join(" · ")} · images ${info.image_size}² px`;
  $("prompt").maxLength = info.limits.max_prompt_chars;
  $("temperature").value = info.defaults.temperature;
  $("top-k").value = info.defaults.top_k;
  $("post-select").value = info.defaults.post_select;
  $("guidance-scale").value = info.defaults.guidance_scale;
  for (const element of document.querySelectorAll(".optional")) {
    element.hidden = !info.options[element.dataset.option];
  }
  $("guidance-scale").max = info.limits.max_guidance_scale;
  // num_images × post_select is bounded by the server: each input's maximum follows the other's value
  const boundCandidates = () => {
    const images = Math.max(1, numberOrNull("num-images") ?? 1);
    const k = Math.max(1, numberOrNull("post-select") ?? 1);
    $("post-select").max = Math.max(1, Math.floor(info.limits.max_candidates / images));
    const imagesMax = Math.min(info.limits.max_images, Math.floor(info.limits.max_candidates / k));
    $("num-images").max = Math.max(1, imagesMax);
  };
  $("num-images").addEventListener("input", boundCandidates);
  $("post-select").addEventListener("input", boundCandidates);
  boundCandidates();
  for (const example of info.examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = example;
    button.addEventListener("click", () => {
      $("prompt").value = example;
    });
    $("examples").append(button);
  }
  $("image2text").hidden = !info.tasks.image2text;
  $("post-selection").hidden = !info.tasks["post-selection"];
  $("t2i-form").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => running && running.abort());
  $("i2t-form").addEventListener("submit", caption);
  $("ps-form").addEventListener("submit", rank);
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  $("server-line").textContent = `cannot reach the server: ${error.message}`;
});
