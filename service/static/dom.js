// Small DOM helpers: elements are built with textContent only (never innerHTML), so names and
// messages from the API can never become markup.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (name === "class") {
      element.className = value;
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    if (Array.isArray(child)) {
      append(element, child);
    } else if (child instanceof Node) {
      element.appendChild(child);
    } else {
      element.appendChild(document.createTextNode(String(child)));
    }
  }
}

export function byId(id) {
  return document.getElementById(id);
}

// A notice area (role=alert): kind "error" | "ok" | "info"; an empty text hides it.
export function notify(element, text, kind = "error") {
  element.textContent = text || "";
  element.className = "notice " + kind;
  element.hidden = !text;
}

export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) {
    return "—";
  }
  return Number(value).toFixed(digits);
}

export function formatPercent(fraction, digits = 1) {
  if (fraction === null || fraction === undefined) {
    return "—";
  }
  return (100 * fraction).toFixed(digits) + " %";
}

export function formatTime(iso) {
  if (!iso) {
    return "—";
  }
  const date = new Date(typeof iso === "number" ? iso * 1000 : iso);
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function formatDateTime(iso) {
  if (!iso) {
    return "—";
  }
  const date = new Date(typeof iso === "number" ? iso * 1000 : iso);
  return date.toLocaleString([], {
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
  });
}

// A button that asks once more before acting: the first click arms it for a few seconds.
export function confirmButton(label, confirmLabel, onConfirm, attributes = {}) {
  let timer = null;
  const button = h("button", { type: "button", ...attributes }, label);
  button.addEventListener("click", async () => {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = confirmLabel;
      timer = setTimeout(() => {
        button.classList.remove("armed");
        button.textContent = label;
      }, 6000);
      return;
    }
    clearTimeout(timer);
    button.classList.remove("armed");
    button.textContent = label;
    button.disabled = true;
    try {
      await onConfirm();
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// A tab's lifecycle, the same for every view: `wire()` once (listeners), then on each show `onShow()`
// and `tick()` every `intervalMs` until hidden. `isVisible()` lets a refresh in flight drop its answer
// when the tab was left meanwhile.
export function viewLifecycle({ wire = () => {}, onShow, tick, intervalMs }) {
  let wired = false;
  let visible = false;
  let timer = null;
  return {
    isVisible: () => visible,
    show() {
      if (!wired) {
        wired = true;
        wire();
      }
      visible = true;
      onShow();
      if (timer === null) {
        timer = setInterval(tick, intervalMs);
      }
    },
    hide() {
      visible = false;
      clearInterval(timer);
      timer = null;
    },
  };
}
