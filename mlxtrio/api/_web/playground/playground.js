// The playground: a chat with the server's models through /v1/chat/completions, streamed, as any client would.
import { ApiError, Credential, authorized, credentialForm, el } from "../common/api.js";

const key = new Credential("mlxtrio.apiKey");
const $ = (id) => document.getElementById(id);
const keyForm = credentialForm("key-form", "API key");
const conversationView = $("conversation");
const promptInput = $("prompt");

// The conversation as the API takes it (the system prompt is added to each request from the settings).
let messages = [];
// The running answer's AbortController: aborting the fetch closes the stream, which cancels it on the server.
let running = null;
// The attached image, as a data: URL, for the next message.
let image = null;

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (character) => ESCAPES[character]);

// HTML the model writes is shown as the text it is; DOMPurify then cleans what Markdown itself made (links' URLs).
marked.use({ gfm: true, breaks: true, renderer: { html: (token) => escapeHtml(token.text) } });

function markdown(text) {
  const html = marked.parse(text, { async: false });
  return DOMPurify.sanitize(html, { FORBID_TAGS: ["style", "form", "input"], FORBID_ATTR: ["style"] });
}

/** The JSON in the setting ``id``, or undefined where it is empty. */
function json(id, what) {
  const text = $(id).value.trim();
  if (text === "") return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ApiError(`${what} is not JSON: ${error.message}`);
  }
}

function settings() {
  const body = {};
  const number = (id, name, parse = Number) => {
    const value = $(id).value.trim();
    if (value !== "") body[name] = parse(value);
  };
  number("temperature", "temperature");
  number("top-p", "top_p");
  number("max-tokens", "max_tokens", (value) => parseInt(value, 10));
  number("seed", "seed", (value) => parseInt(value, 10));
  const stop = $("stop").value.split("\n").filter((line) => line !== "");
  if (stop.length) body.stop = stop;
  const schema = json("schema", "The JSON schema setting");
  if (schema !== undefined) {
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema, strict: true } };
  }
  const extra = json("extra", "The other request fields");
  if (extra !== undefined) {
    if (extra === null || typeof extra !== "object" || Array.isArray(extra)) throw new ApiError("The other request fields must be a JSON object");
    Object.assign(body, extra);
  }
  return body;
}

function requestBody() {
  const system = $("system").value.trim();
  return {
    ...settings(),
    model: $("model").value,
    messages: system ? [{ role: "system", content: system }, ...messages] : [...messages],
    stream: true,
    stream_options: { include_usage: true },
  };
}

const DONE = Symbol("done");

/** The data of each server-sent event, parsed; ``DONE`` for ``[DONE]``. */
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data === "") continue;
      if (data === "[DONE]") {
        yield DONE;
        return;
      }
      yield JSON.parse(data);
    }
  }
}

function userTurn(content) {
  const turn = el("article", { className: "turn user" }, el("div", { className: "role" }, "You"));
  const text = typeof content === "string" ? content : content.find((part) => part.type === "text").text;
  turn.append(el("div", { className: "content plain" }, text));
  if (typeof content !== "string") {
    for (const part of content) {
      if (part.type === "image_url") turn.append(el("img", { className: "thumb", src: part.image_url.url, alt: "attached image" }));
    }
  }
  conversationView.append(turn);
  return turn;
}

function assistantTurn() {
  const content = el("div", { className: "content markdown" });
  const stats = el("div", { className: "stats" });
  const turn = el("article", { className: "turn assistant" }, el("div", { className: "role" }, "Assistant"), content, stats);
  conversationView.append(turn);
  return { turn, content, stats };
}

function showStats(view, { started, first, ended, usage, finish }) {
  const items = [];
  if (first !== null) items.push(["TTFT", `${Math.round(first - started)} ms`]);
  if (usage) {
    const generating = (ended - first) / 1000;
    if (first !== null && usage.completion_tokens > 1 && generating > 0) {
      items.push(["tokens/s", ((usage.completion_tokens - 1) / generating).toFixed(1)]);
    }
    items.push(["prompt tokens", usage.prompt_tokens]);
    items.push(["cached tokens", (usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens) || 0]);
    items.push(["completion tokens", usage.completion_tokens]);
  }
  if (finish) items.push(["finish", finish]);
  view.stats.replaceChildren(
    ...items.map(([name, value]) => el("span", { className: "stat" }, el("b", {}, name), " ", String(value))),
  );
}

function showError(view, error, retry) {
  const box = el("div", { className: "error", role: "alert" }, error.text || String(error));
  if (retry) {
    const button = el("button", { type: "button", className: "retry" }, "Retry");
    button.addEventListener("click", () => {
      view.turn.remove();
      retry();
    });
    box.append(" ", button);
  }
  view.turn.append(box);
}

function setRunning(controller) {
  running = controller;
  $("send").disabled = controller !== null;
  $("stop-button").disabled = controller === null;
}

async function answer() {
  // A new conversation started meanwhile leaves this one's history behind.
  const history = messages;
  const view = assistantTurn();
  const times = { started: performance.now(), first: null, ended: null, usage: null, finish: null };
  let text = "";
  let body;
  try {
    body = requestBody();
  } catch (error) {
    history.pop();
    showError(view, error, null);
    return;
  }
  // Rendered at most once a frame: a fast model's tokens come faster than a page can lay out its Markdown.
  let painting = false;
  const paint = () => {
    painting = false;
    view.content.innerHTML = markdown(text);
  };
  const controller = new AbortController();
  setRunning(controller);
  view.turn.classList.add("streaming");
  try {
    const response = await authorized(key, keyForm, "/v1/chat/completions", { method: "POST", body, signal: controller.signal });
    if (!response.ok) throw await ApiError.of(response);
    let complete = false;
    for await (const event of events(response)) {
      if (event === DONE) {
        complete = true;
        break;
      }
      if (event.error) throw ApiError.inStream(event.error);
      if (event.usage) times.usage = event.usage;
      for (const choice of event.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (times.first === null) times.first = performance.now();
          text += piece;
          if (!painting) {
            painting = true;
            requestAnimationFrame(paint);
          }
        }
        if (choice.finish_reason) times.finish = choice.finish_reason;
      }
    }
    if (!complete) throw new ApiError("the answer's stream ended before it was complete");
    history.push({ role: "assistant", content: text });
  } catch (error) {
    if (error.name === "AbortError") {
      // Stopped: what came so far is the answer, as in any chat client.
      times.finish = "stopped";
      history.push({ role: "assistant", content: text });
    } else {
      const asked = history.pop();
      showError(view, error instanceof ApiError ? error : new ApiError(String(error.message || error)), () => {
        history.push(asked);
        answer();
      });
    }
  } finally {
    times.ended = performance.now();
    paint();
    view.turn.classList.remove("streaming");
    showStats(view, times);
    setRunning(null);
  }
}

function send() {
  const text = promptInput.value;
  if (running !== null || (!text.trim() && image === null)) return;
  const content = image === null ? text : [{ type: "text", text }, { type: "image_url", image_url: { url: image } }];
  messages.push({ role: "user", content });
  userTurn(content);
  promptInput.value = "";
  setImage(null);
  answer();
}

function setImage(url) {
  image = url;
  $("attachment").hidden = url === null;
  if (url === null) {
    $("attachment-preview").removeAttribute("src");
    $("image").value = "";
  } else {
    $("attachment-preview").src = url;
  }
}

async function loadModels() {
  const select = $("model");
  try {
    const response = await authorized(key, keyForm, "/v1/models");
    if (!response.ok) throw await ApiError.of(response);
    const models = (await response.json()).data.map((model) => model.id);
    const wanted = sessionStorage.getItem("mlxtrio.model");
    select.replaceChildren(...models.map((id) => el("option", { value: id, selected: id === wanted }, id)));
  } catch (error) {
    const view = assistantTurn();
    showError(view, error instanceof ApiError ? error : new ApiError(String(error)), () => loadModels());
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
promptInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
$("stop-button").addEventListener("click", () => running && running.abort());
$("new-chat").addEventListener("click", () => {
  if (running) running.abort();
  messages = [];
  conversationView.replaceChildren();
  promptInput.focus();
});
$("toggle-settings").addEventListener("click", (event) => {
  const panel = $("settings");
  panel.hidden = !panel.hidden;
  event.currentTarget.setAttribute("aria-expanded", String(!panel.hidden));
});
$("model").addEventListener("change", (event) => sessionStorage.setItem("mlxtrio.model", event.target.value));
$("image").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.addEventListener("load", () => setImage(reader.result));
  reader.readAsDataURL(file);
});
$("attachment-remove").addEventListener("click", () => setImage(null));

loadModels();
promptInput.focus();
