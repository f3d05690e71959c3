// The embed gallery's copy buttons: copy a snippet's code, or select it when the clipboard is out of reach.
// Without JavaScript the buttons stay hidden and the code is selected by hand.
(function () {
  "use strict";
  var script = document.currentScript;
  var copied = script.getAttribute("data-copied");
  var selected = script.getAttribute("data-selected");

  function select(code) {
    var range = document.createRange();
    range.selectNodeContents(code);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function announce(status, message) {
    // Emptied first, so that the same words said twice are announced twice.
    status.textContent = "";
    window.setTimeout(function () { status.textContent = message; }, 100);
  }

  function legacyCopy(code) {
    select(code);
    try {
      return document.execCommand("copy");
    } catch (error) {
      return false;
    }
  }

  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var code = document.getElementById(button.getAttribute("data-copy"));
    var status = document.getElementById(button.getAttribute("data-copy") + "-status");
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = code.textContent;
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () {
          announce(status, copied);
        }, function () {
          select(code);
          announce(status, selected);
        });
      } else {
        announce(status, legacyCopy(code) ? copied : selected);
      }
    });
  });
})();
