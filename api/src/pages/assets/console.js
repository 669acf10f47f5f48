// Progressive enhancement only: every page works without this script.
// An element with data-live="<url>" is refreshed from that URL every second (the server answers
// an HTML fragment of the same element's content) until the fragment says data-final.
"use strict";
(function () {
  function poll(el) {
    var url = el.getAttribute("data-live");
    if (!url) return;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        el.innerHTML = html;
        if (el.querySelector("[data-final]")) {
          el.removeAttribute("data-live");
          if (el.hasAttribute("data-reload-when-final")) window.location.reload();
          return;
        }
        window.setTimeout(function () { poll(el); }, 1000);
      })
      .catch(function () { window.setTimeout(function () { poll(el); }, 3000); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      window.setTimeout(function () { poll(el); }, 1000);
    });
    document.querySelectorAll("[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  });
})();
