/* newsletter embed.js: turns <div data-newsletter="slug[,slug]"> into a signup form, and fits
   our iframes to their content. No dependencies; the form lives in a shadow root, so the page's
   CSS can't reach it. Optional attributes: data-lang="uk", data-form-id="sidebar". */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var base = script.src.replace(/\/embed\.js(\?.*)?$/, "");
  var count = 0;

  var CSS =
    ":host{all:initial;display:block;font:16px/1.45 Georgia,'Times New Roman',serif;color:#1a1a1a}" +
    "form,.box{margin:0}h2{font-size:1.1rem;margin:0 0 .25rem}p{margin:.25rem 0}" +
    "label{display:block;font-weight:bold;margin-top:.5rem}" +
    "input[type=email]{width:100%;box-sizing:border-box;font:inherit;padding:.45rem;border:1px solid #767676;border-radius:4px}" +
    "input[aria-invalid=true]{border:2px solid #a4001d}fieldset{border:0;padding:0;margin:.5rem 0 0}legend{font-weight:bold}" +
    ".opt label{display:inline;font-weight:normal;margin:0}.hint{color:#555;font-size:.85rem}" +
    ".error{color:#a4001d;font-weight:bold}.req{color:#a4001d}" +
    "button{font:inherit;margin-top:.6rem;padding:.5rem 1.1rem;border:0;border-radius:4px;background:#0b5394;color:#fff;cursor:pointer}" +
    "button[disabled]{opacity:.6}:focus-visible{outline:3px solid #ffbf47;outline-offset:2px}" +
    ".hp{position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden}" +
    ".thanks{border-left:4px solid #0b5394;padding:.4rem .8rem;background:#eef4fb}";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var key in attrs || {}) node.setAttribute(key, attrs[key]);
    if (text) node.textContent = text;
    return node;
  }

  function language(host) {
    var owner = host.closest("[lang]");
    return host.getAttribute("data-lang") || (owner && owner.getAttribute("lang")) || navigator.language || "en";
  }

  function showErrors(slot, input, messages) {
    slot.textContent = "";
    (messages || []).forEach(function (message) { slot.appendChild(el("p", { "class": "error" }, message)); });
    if (input) {
      if (messages && messages.length) {
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-describedby", slot.id);
      } else {
        input.removeAttribute("aria-invalid");
        input.removeAttribute("aria-describedby");
      }
    }
  }

  function draw(host, settings, lang) {
    var t = settings.texts, id = "nl" + (++count), newsletters = settings.newsletters;
    var root = host.shadowRoot || host.attachShadow({ mode: "open" });
    root.textContent = "";
    root.appendChild(el("style", {}, CSS));
    var box = el("div", { "class": "box", lang: settings.lang || lang });
    root.appendChild(box);
    box.appendChild(el("h2", {}, newsletters.map(function (n) { return n.name; }).join(" · ")));
    if (newsletters.length === 1 && newsletters[0].description) {
      var about = newsletters[0].description + (newsletters[0].author ? " " + t.by + " " + newsletters[0].author + "." : "");
      box.appendChild(el("p", { "class": "hint" }, about));
    }
    var status = el("div", { role: "status", "aria-live": "polite" });
    var alert = el("div", { id: id + "-form-error", role: "alert", "aria-live": "assertive" });
    box.appendChild(status);
    box.appendChild(alert);

    var form = el("form", { novalidate: "" });
    var label = el("label", { "for": id + "-email" }, t.email_label + " ");
    label.appendChild(el("span", { "class": "req", "aria-hidden": "true" }, "*"));
    var emailErrors = el("div", { id: id + "-email-error" });
    var email = el("input", { type: "email", id: id + "-email", name: "email", required: "", autocomplete: "email" });
    form.appendChild(label);
    form.appendChild(emailErrors);
    form.appendChild(email);

    var boxes = [], listErrors = el("div", { id: id + "-newsletters-error" });
    if (newsletters.length > 1) {
      var fieldset = el("fieldset", {});
      var legend = el("legend", {}, t.newsletters_legend + " ");
      legend.appendChild(el("span", { "class": "req", "aria-hidden": "true" }, "*"));
      fieldset.appendChild(legend);
      fieldset.appendChild(listErrors);
      newsletters.forEach(function (n) {
        var row = el("div", { "class": "opt" });
        var box = el("input", { type: "checkbox", id: id + "-" + n.slug, value: n.slug });
        boxes.push(box);
        row.appendChild(box);
        row.appendChild(el("label", { "for": id + "-" + n.slug }, " " + n.name));
        fieldset.appendChild(row);
      });
      form.appendChild(fieldset);
    } else {
      form.appendChild(listErrors);
    }
    var trap = el("div", { "class": "hp", "aria-hidden": "true" });
    trap.appendChild(el("label", { "for": id + "-website" }, t.honeypot));
    var honeypot = el("input", { type: "text", id: id + "-website", tabindex: "-1", autocomplete: "off" });
    trap.appendChild(honeypot);
    form.appendChild(trap);
    var hint = el("p", { "class": "hint" });
    hint.appendChild(el("span", { "class": "req", "aria-hidden": "true" }, "*"));
    hint.appendChild(document.createTextNode(" " + t.required_hint));
    form.appendChild(hint);
    var button = el("button", { type: "submit" }, t.submit);
    form.appendChild(button);
    box.appendChild(form);

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var chosen = newsletters.length > 1
        ? boxes.filter(function (b) { return b.checked; }).map(function (b) { return b.value; })
        : [newsletters[0].slug];
      var local = email.value.trim() && /^[^@\s]+@[^@\s]+$/.test(email.value.trim()) ? [] : [t.invalid_email];
      showErrors(emailErrors, email, local);
      showErrors(listErrors, null, chosen.length ? [] : [t.choose]);
      showErrors(alert, null, []);
      if (local.length) { email.focus(); return; }
      if (!chosen.length) { (boxes[0] || email).focus(); return; }
      button.disabled = true;
      button.textContent = t.sending;
      fetch(base + "/api/v1/subscriptions", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept-Language": lang },
        body: JSON.stringify({
          email: email.value, newsletters: chosen, form_token: settings.form_token, website: honeypot.value,
          page_url: location.href, form_id: host.getAttribute("data-form-id") || host.id || undefined,
          embed: "script", lang: lang
        })
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (response.status === 202) {
            form.remove();
            alert.textContent = "";
            var thanks = el("p", { "class": "thanks", tabindex: "-1" }, t.thanks);
            status.appendChild(thanks);
            thanks.focus();
            return;
          }
          var errors = body.errors || {};
          showErrors(emailErrors, email, errors.email);
          showErrors(listErrors, null, errors.newsletters);
          var rest = [];
          for (var key in errors) if (key !== "email" && key !== "newsletters") rest = rest.concat(errors[key]);
          showErrors(alert, null, rest.length || errors.email || errors.newsletters ? rest : [t.failed]);
          if (errors.email) email.focus();
        });
      }).catch(function () {
        showErrors(alert, null, [t.failed]);
      }).then(function () {
        button.disabled = false;
        button.textContent = t.submit;
      });
    });
  }

  function mount(host) {
    if (host.getAttribute("data-newsletter-ready")) return;
    host.setAttribute("data-newsletter-ready", "1");
    var lang = language(host);
    var url = base + "/api/v1/forms?newsletters=" + encodeURIComponent(host.getAttribute("data-newsletter")) +
      "&lang=" + encodeURIComponent(lang);
    fetch(url, { headers: { "Accept-Language": lang } })
      .then(function (response) { return response.ok ? response.json() : Promise.reject(response.status); })
      .then(function (settings) { draw(host, settings, lang); })
      .catch(function () { host.removeAttribute("data-newsletter-ready"); });
  }

  // Our iframes report their height; fit each to its form.
  addEventListener("message", function (event) {
    if (event.origin !== new URL(base).origin || !event.data || !event.data.newsletterFrameHeight) return;
    var frames = document.getElementsByTagName("iframe");
    for (var i = 0; i < frames.length; i++) {
      if (frames[i].contentWindow === event.source) frames[i].style.height = event.data.newsletterFrameHeight + "px";
    }
  });

  // A frame that loaded before this script ran reported its height to nobody: ask our frames again.
  Array.prototype.forEach.call(document.getElementsByTagName("iframe"), function (frame) {
    if (frame.contentWindow) frame.contentWindow.postMessage("newsletterFrameHeight?", new URL(base).origin);
  });

  function mountAll() { Array.prototype.forEach.call(document.querySelectorAll("[data-newsletter]"), mount); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mountAll);
  else mountAll();
})();
