// Log in with a JSON POST to /login; on success go to the chat page.
(() => {
  "use strict";
  const form = document.getElementById("login-form");
  const button = document.getElementById("login-button");
  const error = document.getElementById("login-error");

  function showError(text) {
    error.textContent = text;
    error.hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    button.disabled = true;
    try {
      const response = await fetch("/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({
          username: form.username.value.trim(),
          password: form.password.value,
        }),
      });
      if (response.ok) {
        window.location.assign("/");
        return;
      }
      let detail = "Sign-in failed (" + response.status + ")";
      try {
        const body = await response.json();
        if (body && typeof body.error === "string") detail = body.error;
      } catch (_) { /* not JSON: keep the status */ }
      showError(detail);
    } catch (_) {
      showError("Cannot reach the server. Try again.");
    } finally {
      button.disabled = false;
    }
  });
})();
