// The try-it page: POST /v1/predict, draw one probability bar per class and, when asked, highlight
// the review's key words (the endpoint's integrated-gradients attributions).
"use strict";

const SAMPLES = {
  positive: "This movie is an absolute masterpiece! The acting was brilliant and the plot kept me engaged throughout. Highly recommend!",
  negative: "What a waste of time. The plot was confusing, acting was terrible, and I couldn't wait for it to end.",
  mixed: "While the cinematography was stunning, the weak storyline and poor character development ruined the experience.",
};
const KEY_STORE = "sentiment-api-key";
const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function detailText(body) {
  const d = body && body.detail;
  if (Array.isArray(d)) return d.map((e) => `${e.loc.slice(1).join(".")}: ${e.msg}`).join("; ");
  return d || "request failed";
}

function showError(message) {
  $("result").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
}

// An element with a class and, optionally, text (never parsed as HTML: label names come from the checkpoint).
function el(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function bar(name, p) {
  const pct = (100 * p).toFixed(1) + "%";
  const fill = el("div", "fill");
  fill.style.width = pct;
  const track = el("div", "track");
  track.append(fill);
  const row = el("div", "bar");
  row.dataset.label = name;  // styled by [data-label=...], never a class made of a label name
  row.append(el("span", "", name), track, el("span", "pct", pct));
  return row;
}

// Accents off and lowercase, as the uncased tokenizer compares words.
const norm = (word) => word.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase();

function highlighted(text, keyTokens) {
  const scores = new Map(keyTokens.map((k) => [k.word, k.score]));
  const out = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(/[\p{L}\p{N}]+(?:'[\p{L}\p{N}]+)*/gu)) {
    const word = norm(m[0]);
    if (!scores.has(word)) continue;
    out.append(text.slice(last, m.index));
    const mark = document.createElement("mark");
    mark.textContent = m[0];
    mark.dataset.word = word;
    mark.title = `attribution ${scores.get(word).toFixed(3)}`;
    out.append(mark);
    last = m.index + m[0].length;
  }
  out.append(text.slice(last));
  return out;
}

function showKeyTokens(pred, text) {
  $("explained").hidden = !pred.key_tokens;
  if (!pred.key_tokens) return;
  $("explained-label").textContent = pred.label;
  $("key-tokens").textContent = pred.key_tokens.map((k) => k.word).join(", ") || "none";
  $("review").replaceChildren(highlighted(text, pred.key_tokens));
}

function showPrediction(pred, text) {
  $("error").hidden = true;
  // a multi-label model: every label above its threshold (maybe none); else the one class
  $("label").textContent = Array.isArray(pred.labels) ? (pred.labels.join(", ") || "none of the labels") : pred.label;
  $("label").dataset.label = pred.label;
  $("score").textContent = (100 * pred.score).toFixed(1) + "%";
  $("uncertain").hidden = !pred.uncertain;
  $("bars").replaceChildren(...Object.entries(pred.probabilities).map(([n, p]) => bar(n, p)));
  $("tokens").textContent = `${pred.num_tokens} tokens` + (pred.truncated ? " (truncated to the model's limit)" : "")
    + (pred.windows > 1 ? ` (scored in ${pred.windows} windows)` : "");
  showKeyTokens(pred, text);
  $("result").hidden = false;
}

async function predict() {
  const text = $("text").value;
  if (!text.trim()) return showError("Type a review first.");
  $("predict").disabled = true;
  try {
    const explain = !$("explain-row").hidden && $("explain").checked;
    const r = await fetch("/v1/predict", { method: "POST", headers: headers(), body: JSON.stringify({ text, explain }) });
    const body = await r.json();
    if (r.status === 401) return showError("API key needed or wrong: enter it above.");
    if (!r.ok) return showError(detailText(body));
    showPrediction(body.predictions[0], text);
  } catch (err) {
    showError("The server could not be reached: " + err);
  } finally {
    $("predict").disabled = false;
  }
}

async function init() {
  $("key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("key").addEventListener("input", () => sessionStorage.setItem(KEY_STORE, $("key").value));
  $("predict").addEventListener("click", predict);
  for (const b of document.querySelectorAll(".sample")) {
    b.addEventListener("click", () => { $("text").value = SAMPLES[b.dataset.kind]; predict(); });
  }
  const health = await (await fetch("/healthz")).json();
  $("key-row").hidden = !health.auth_required;
  $("explain-row").hidden = !health.explain;
  const info = await fetch("/v1/model", { headers: headers() });
  if (info.ok) {
    const m = await info.json();
    $("model").textContent = `${m.config.name_or_path.split("/").pop()} · ${m.label_names.join(" / ")} · sha256 ${m.sha256.slice(0, 12)}`;
  }
}

init();
