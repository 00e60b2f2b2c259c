// The page: tabs (#live, #objects, #enrol, #models in the URL), the header (readiness, serving model
// version, auth) and the API key form. Each view module exports show() and hide().

import { getKey, readiness, setKey } from "./api.js";
import { byId } from "./dom.js";
import * as enrol from "./enrol.js";
import * as live from "./live.js";
import * as models from "./models.js";
import * as objects from "./objects.js";

const VIEWS = { live, objects, enrol, models };
const HEADER_INTERVAL_MS = 3000;

let current = null;

function selectView(name) {
  if (!(name in VIEWS)) {
    name = "live";
  }
  if (current === name) {
    return;
  }
  if (current) {
    VIEWS[current].hide();
  }
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const selected = tab.dataset.view === name;
    tab.setAttribute("aria-selected", selected ? "true" : "false");
    tab.tabIndex = selected ? 0 : -1;
    byId("view-" + tab.dataset.view).hidden = !selected;
  }
  current = name;
  VIEWS[name].show();
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      history.replaceState(null, "", "#" + tab.dataset.view);
      selectView(tab.dataset.view);
    });
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) {
        return;
      }
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      next.focus();
      next.click();
    });
  }
  window.addEventListener("hashchange", () => selectView(location.hash.slice(1)));
  selectView(location.hash.slice(1));
}

const STATE_LABELS = {
  ready: "ready",
  empty: "ready · nothing enrolled",
  loading: "loading a model…",
  failed: "model failed to load",
  draining: "shutting down",
};

async function refreshHeader() {
  const pill = byId("ready-state");
  try {
    const body = await readiness();
    pill.textContent = STATE_LABELS[body.state] || body.state;
    pill.className = "pill " + (body.ready ? "ok" : body.state === "loading" ? "warn" : "bad");
    let serving = body.model_version || "none";
    if (body.active_version && body.active_version !== body.model_version) {
      serving += ` (switching to ${body.active_version})`;
    }
    const element = byId("serving-version");
    const changed = element.dataset.version !== undefined && element.dataset.version !== (body.model_version || "");
    element.textContent = serving;
    element.dataset.version = body.model_version || "";
    if (changed) {
      window.dispatchEvent(new CustomEvent("iumad-serving-changed")); // views show the serving model
    }
    pill.title = body.last_load_error ? body.last_load_error.message : "";
    byId("auth-state").textContent = body.auth_enabled ? "on: API key needed" : "off (no keys configured)";
  } catch {
    pill.textContent = "unreachable";
    pill.className = "pill bad";
  }
}

function setupKeyForm() {
  const input = byId("api-key");
  const state = byId("key-state");
  const show = () => {
    state.textContent = getKey() ? "key set for this browser session" : "no key";
  };
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    input.value = "";
    show();
  });
  byId("key-clear").addEventListener("click", () => {
    setKey("");
    input.value = "";
    show();
  });
  show();
  window.addEventListener("iumad-key-changed", () => {
    if (current) {
      VIEWS[current].show();
    }
  });
}

setupKeyForm();
setupTabs();
refreshHeader();
setInterval(refreshHeader, HEADER_INTERVAL_MS);
window.addEventListener("iumad-model-changed", refreshHeader);
