// slimtune dashboard: draws the figures the server embedded, opens a trial on click, sends the
// actions (launch, stop, export) with the API token, and reloads a running study when it moves.
(function () {
  "use strict";
  const body = document.body;
  const study = body.dataset.study;
  const config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function openTrial(number) {
    if (number === undefined || number === null) return;
    const row = document.getElementById("trial-" + number);
    if (location.protocol === "file:" || !study || document.documentElement.dataset.inline) {
      if (row) { row.scrollIntoView({ block: "center" }); row.classList.add("picked"); }
      return;
    }
    location.href = "/studies/" + encodeURIComponent(study) + "/trials/" + number;
  }

  function draw(id, figure) {
    const element = document.getElementById(id);
    if (!element || !window.Plotly) return;
    element.innerHTML = "";
    Plotly.newPlot(element, figure.data, figure.layout, config).then(function () {
      if (element.dataset.click === "trial") {
        element.on("plotly_click", function (event) {
          const point = event.points && event.points[0];
          // a point's customdata is a row (a typed array once plotly decoded it): the trial first
          const data = point && point.customdata;
          if (data !== undefined) openTrial(data !== null && typeof data === "object" ? data[0] : data);
        });
      }
      element.dataset.rendered = "true";
    });
  }

  document.querySelectorAll("script[data-plot]").forEach(function (script) {
    draw(script.dataset.plot, JSON.parse(script.textContent));
  });

  document.querySelectorAll("[data-src]").forEach(function (element) {
    fetch(element.dataset.src).then(function (r) { return r.json(); }).then(function (figure) {
      if (figure.empty) { element.innerHTML = '<p class="empty">' + figure.empty + "</p>"; return; }
      draw(element.id, figure);
    }).catch(function () { element.innerHTML = '<p class="empty">could not compute</p>'; });
  });

  // axis choices redraw the page with the new pair
  document.querySelectorAll("form.axes select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  // the token lives in this tab only (sessionStorage), never in a cookie
  const tokenInput = document.getElementById("api-token");
  if (tokenInput) {
    tokenInput.value = sessionStorage.getItem("slimtune-token") || "";
    tokenInput.addEventListener("change", function () { sessionStorage.setItem("slimtune-token", tokenInput.value.trim()); });
  }

  function say(text, ok) {
    const result = document.getElementById("action-result");
    if (!result) return;
    result.textContent = text;
    result.className = "result " + (ok ? "ok" : "error");
  }

  async function post(path, payload) {
    const token = tokenInput ? tokenInput.value.trim() : "";
    const response = await fetch(path, {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" }, token ? { Authorization: "Bearer " + token } : {}),
      body: JSON.stringify(payload || {}),
    });
    const answer = await response.json().catch(function () { return {}; });
    if (!response.ok) {
      const detail = answer.message || (typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail));
      throw new Error(response.status + ": " + detail);
    }
    return answer;
  }

  const actions = {
    "launch": function () {
      const workers = parseInt(document.getElementById("workers").value, 10) || 1;
      return post("/api/studies/" + encodeURIComponent(study) + "/launch", { workers: workers })
        .then(function (a) { say("started " + workers + " worker(s), pid " + a.pid + "; log " + a.log, true); setTimeout(function () { location.reload(); }, 2500); });
    },
    "stop": function () {
      return post("/api/studies/" + encodeURIComponent(study) + "/stop")
        .then(function (a) { say("SIGTERM sent to " + a.stopped.join(", "), true); });
    },
    "export-knee": function () {
      return post("/api/studies/" + encodeURIComponent(study) + "/export", { knee: true })
        .then(function (a) { say("exported to " + a.out, true); });
    },
    "export-trial": function () {
      const format = (document.getElementById("export-format").value || "pt2").trim();
      return post("/api/studies/" + encodeURIComponent(study) + "/export", { trial: parseInt(body.dataset.trial, 10), format: format })
        .then(function (a) { say("exported to " + a.out, true); setTimeout(function () { location.reload(); }, 1500); });
    },
  };
  document.querySelectorAll("button[data-action]").forEach(function (button) {
    button.addEventListener("click", function () {
      button.disabled = true;
      say("working…", true);
      actions[button.dataset.action]().catch(function (error) { say(error.message, false); })
        .finally(function () { button.disabled = false; });
    });
  });

  // a running study: poll its summary and reload when a trial finished or the state changed
  if (body.dataset.refresh) {
    let seen = null;
    const signature = function (answer) {
      const list = Array.isArray(answer) ? answer : [answer];
      return list.map(function (s) { return [s.name, s.state, s.complete, s.failed, s.running, s.status].join(":"); }).join("|");
    };
    setInterval(function () {
      fetch(body.dataset.refresh).then(function (r) { return r.json(); }).then(function (answer) {
        const now = signature(answer);
        if (seen !== null && now !== seen) location.reload();
        seen = now;
      }).catch(function () {});
    }, 5000);
  }
})();
