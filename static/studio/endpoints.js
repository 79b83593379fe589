// The endpoint page: each traffic slider shows its share as it moves.
(function () {
  "use strict";
  document.querySelectorAll("input[data-share-of]").forEach(function (slider) {
    var shown = document.querySelector("output[data-share-shown='" + slider.dataset.shareOf + "']");
    slider.addEventListener("input", function () { shown.textContent = slider.value; });
  });
})();
