// Talking to the gateway: the API key (kept in sessionStorage), JSON calls, uploads with progress,
// and the API's error shape {"error": {"code", "message"}} turned into readable messages.

const KEY_STORAGE = "iumad-api-key";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export function getKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setKey(key) {
  if (key) {
    sessionStorage.setItem(KEY_STORAGE, key);
  } else {
    sessionStorage.removeItem(KEY_STORAGE);
  }
  window.dispatchEvent(new CustomEvent("iumad-key-changed"));
}

function headers(extra = {}) {
  const result = { ...extra };
  const key = getKey();
  if (key) {
    result["X-API-Key"] = key;
  }
  return result;
}

// The API's error envelope (or a body that is not one) as an ApiError: the one reading of it.
function errorFromBody(status, statusText, body, fallback = "request failed") {
  const error = (body && body.error) || {};
  const message = error.message || statusText || fallback;
  return new ApiError(status, error.code || "http_" + status, message, error.details);
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: keep the status text
  }
  return errorFromBody(response.status, response.statusText, body);
}

async function call(method, path, body) {
  const options = { method, headers: headers({ Accept: "application/json" }) };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(0, "network", "the gateway cannot be reached (" + error.message + ")");
  }
  if (!response.ok) {
    throw await errorFrom(response);
  }
  return response.json();
}

export const getJson = (path) => call("GET", path);
export const postJson = (path, body) => call("POST", path, body);
export const patchJson = (path, body) => call("PATCH", path, body);

// Readiness answers 503 while loading: both answers carry the same JSON body.
export async function readiness() {
  const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
  return response.json();
}

// An image the API serves behind the API key, as an object URL for <img src>.
export async function imageUrl(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) {
    throw await errorFrom(response);
  }
  return URL.createObjectURL(await response.blob());
}

// multipart upload with progress (fetch cannot report upload progress): onProgress(loaded, total).
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    for (const [name, value] of Object.entries(headers({ Accept: "application/json" }))) {
      request.setRequestHeader(name, value);
    }
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        onProgress(event.loaded, event.total);
      }
    });
    request.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = null;
      }
      if (request.status >= 200 && request.status < 300) {
        resolve(body);
      } else {
        reject(errorFromBody(request.status, request.statusText, body, "upload failed"));
      }
    });
    request.addEventListener("error", () =>
      reject(new ApiError(0, "network", "the upload failed: the gateway cannot be reached")),
    );
    request.send(formData);
  });
}

// One line an operator can act on.
export function describeError(error) {
  if (!(error instanceof ApiError)) {
    return String(error && error.message ? error.message : error);
  }
  let text = error.status ? `${error.status} ${error.code}: ${error.message}` : error.message;
  if (error.status === 401) {
    text += getKey()
      ? " — the API key entered at the top is not accepted."
      : " — enter an API key at the top of the page.";
  } else if (error.status === 403) {
    text += " — enter an operator key at the top of the page.";
  }
  if (Array.isArray(error.details) && error.details.length) {
    const shown = error.details.slice(0, 5).map((detail) =>
      detail.file ? `${detail.file}: ${detail.reason}` : `${detail.field}: ${detail.message}`,
    );
    text += " (" + shown.join("; ") + (error.details.length > 5 ? "; …" : "") + ")";
  }
  return text;
}
