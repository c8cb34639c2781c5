(function () {
  "use strict";
  var audio = document.getElementById("player");
  var transcript = document.getElementById("transcript");
  var words = Array.prototype.slice.call(document.querySelectorAll("#transcript .w"));
  var starts = words.map(function (w) { return parseFloat(w.getAttribute("data-s")); });
  var ends = words.map(function (w) { return parseFloat(w.getAttribute("data-e")); });
  var svg = document.querySelector("svg.timeline");
  var playhead = document.getElementById("playhead");
  var follow = document.getElementById("follow");
  var current = -1;

  // index of the word being spoken at time t (-1 in a pause)
  function wordAt(t) {
    var lo = 0, hi = starts.length - 1, found = -1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (starts[mid] <= t) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    if (found >= 0 && t <= ends[found] + 0.15) { return found; }
    return -1;
  }

  function highlight(index) {
    if (index === current) { return; }
    if (current >= 0) { words[current].classList.remove("cur"); }
    current = index;
    if (index >= 0) {
      words[index].classList.add("cur");
      if (follow && follow.checked && audio && !audio.paused) {
        var r = words[index].getBoundingClientRect();
        if (r.top < 120 || r.bottom > window.innerHeight - 20) {
          words[index].scrollIntoView({ block: "center" });
        }
      }
    }
  }

  function movePlayhead(t) {
    if (!svg || !playhead) { return; }
    var duration = parseFloat(svg.getAttribute("data-duration")) || 1;
    var left = parseFloat(svg.getAttribute("data-left"));
    var plot = parseFloat(svg.getAttribute("data-plot"));
    var x = left + plot * Math.min(Math.max(t / duration, 0), 1);
    playhead.setAttribute("x1", x);
    playhead.setAttribute("x2", x);
    playhead.setAttribute("visibility", "visible");
  }

  function update() {
    if (!audio) { return; }
    highlight(wordAt(audio.currentTime));
    movePlayhead(audio.currentTime);
  }

  function seek(t) {
    if (audio) {
      audio.currentTime = t;
      var p = audio.play();
      if (p && p.catch) { p.catch(function () {}); }
    }
    highlight(wordAt(t + 0.001));
    movePlayhead(t);
  }

  if (transcript) {
    transcript.addEventListener("click", function (ev) {
      var target = ev.target;
      var w = target.closest ? target.closest(".w") : null;
      if (w) { seek(parseFloat(w.getAttribute("data-s"))); return; }
      var ts = target.closest ? target.closest(".ts") : null;
      if (ts) { seek(parseFloat(ts.getAttribute("data-s"))); }
    });
  }

  if (svg) {
    svg.addEventListener("click", function (ev) {
      var box = svg.getBoundingClientRect();
      var vb = svg.viewBox.baseVal;
      var x = (ev.clientX - box.left) * vb.width / box.width;
      var left = parseFloat(svg.getAttribute("data-left"));
      var plot = parseFloat(svg.getAttribute("data-plot"));
      var duration = parseFloat(svg.getAttribute("data-duration")) || 1;
      if (x >= left) { seek(Math.min(duration, (x - left) / plot * duration)); }
    });
  }

  if (audio) {
    var raf = 0;
    var loop = function () { update(); if (!audio.paused) { raf = requestAnimationFrame(loop); } };
    audio.addEventListener("play", function () { cancelAnimationFrame(raf); raf = requestAnimationFrame(loop); });
    audio.addEventListener("timeupdate", update);
    audio.addEventListener("seeked", update);
  }

  window.callannotateViewer = {
    seek: seek,
    currentWord: function () { return current; },
    wordAt: wordAt
  };
})();
