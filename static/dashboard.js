// SynthIQ dashboard: polls the JSON APIs every 2 s and redraws. No framework, no build.
"use strict";

(function () {
  const POLL_MS = 2000;
  // The tiers and their labels come from /api/status (defined once, in Python).
  let TIERS = [];
  let TIER_LABEL = {};

  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key === "title") node.title = value;
      else node[key] = value;
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmtInt(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "–";
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toISOString().slice(11, 19);
  }

  // The browser's local time of day (24 h), shown beside UTC: an operator reads both.
  function fmtLocal(iso) {
    if (!iso) return "–";
    return new Date(iso).toLocaleTimeString("en-GB", { hour12: false });
  }

  // The local date too when it is not today's.
  function fmtLocalDay(iso) {
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    return (today ? "" : d.toLocaleDateString("en-CA") + " ") + fmtLocal(iso);
  }

  const LOCAL_ZONE = (Intl.DateTimeFormat().resolvedOptions().timeZone || "local");

  // A time cell: UTC (with its date when not today's), and local time beneath it.
  function timeCell(iso) {
    const day = new Date(iso).toISOString().slice(0, 10);
    const utc = (day === new Date().toISOString().slice(0, 10) ? "" : day + " ") + fmtTime(iso) + " UTC";
    return el("td", { class: "mono time", title: iso },
      el("div", { "data-field": "utc" }, utc),
      el("div", { class: "sub", "data-field": "local" }, fmtLocalDay(iso) + " local"));
  }

  function age(iso) {
    if (!iso) return "never";
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function duration(iso) {
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    return Math.round(s / 86400) + " days";
  }

  function pill(tier) {
    return el("span", { class: "pill tier-" + tier }, TIER_LABEL[tier] || tier);
  }

  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  async function getJSON(url) {
    const rsp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (rsp.status === 401 || rsp.status === 403) {
      window.location.href = "/admin/login/?next=/";
      throw new Error("not logged in");
    }
    if (!rsp.ok) throw new Error(url + ": HTTP " + rsp.status);
    return rsp.json();
  }

  // -- banners --------------------------------------------------------------------
  function banners(status, error, poolList) {
    const out = [];
    if (error) {
      out.push(["danger", "Dashboard cannot reach the API", String(error.message || error) + " — showing the last data received."]);
    }
    if (status) {
      if (!status.database.ok) {
        const detail = status.database.errors.map((e) => e.process + ": " + e.error).join("; ");
        out.push(["danger", "Affinity database unreachable",
          "Bound studies keep routing from the hot cache; new studies are decided in memory (" +
          fmtInt(status.database.pending_bindings) + " bindings pending). " + detail]);
      }
      if (status.heartbeat.stale) {
        const pools = status.heartbeat.pools
          .map((p) => p.pool + ": last round " + (p.last_round_utc ? age(p.last_round_utc) : "never"))
          .join("; ");
        out.push(["warning", "Heartbeats are stale",
          "No heartbeat round in the last " + 3 * status.heartbeat.interval_seconds +
          " s — backend health and load shown here may be out of date. " + pools]);
      }
      for (const pool of poolList || []) {
        if (pool.degraded.length) {
          out.push(["danger", "Pool " + pool.id + " degraded", pool.degraded.join("; ") + "."]);
        }
      }
      if (status.processes.length === 0) {
        out.push(["warning", "No runproxy process is publishing", "Counters are empty; nothing is listening for DICOM, or the proxy cannot reach the database."]);
      } else if (status.pools_without_listener.length) {
        out.push(["warning", "Pool without a listener", status.pools_without_listener.join(", ") + " is not accepting associations."]);
      }
    }
    const box = $("#banners");
    box.replaceChildren(...out.map(([kind, title, text]) =>
      el("div", { class: "banner " + kind, "data-banner": title }, el("strong", {}, title), el("span", {}, text))));
  }

  // -- counters ---------------------------------------------------------------------
  function counters(status) {
    const rejected = Object.entries(status.counters.rejected || {});
    const values = Object.assign({}, status.counters, {
      cache_size: status.cache_size,
      processes: status.processes.length,
      rejected: rejected.reduce((sum, [, n]) => sum + n, 0),
    });
    for (const node of document.querySelectorAll("[data-counter]")) {
      node.textContent = fmtInt(values[node.dataset.counter]);
    }
    const failed = document.querySelector('[data-counter="failed"]');
    failed.classList.toggle("bad", status.counters.failed > 0);
    const refused = document.querySelector('[data-counter="rejected"]');
    refused.classList.toggle("bad", values.rejected > 0);
    refused.closest(".tile").title = "Associations rejected at negotiation (A-ASSOCIATE-RJ)" +
      (rejected.length ? ": " + rejected.map(([reason, n]) => `${reason} ${fmtInt(n)}`).join(", ") : "");
    $("#tiers").replaceChildren(...TIERS.map((tier) =>
      el("span", { class: "tier-count", "data-tier": tier }, pill(tier), el("b", {}, fmtInt(status.counters.routed[tier])))));
  }

  // Each pool's services beyond storage: offered or not, and why not (never "none yet").
  function services(poolList) {
    const blocks = poolList.filter((p) => p.enabled).map((pool) => el("div", { class: "services", "data-pool": pool.id },
      poolList.length > 1 ? el("div", { class: "sub" }, "Pool " + pool.id) : null,
      el("div", { class: "tiers" }, pool.services.map((s) => el("span", {
        class: "service " + (s.offered ? "offered" : s.known ? "not-offered" : "unknown"),
        "data-service": s.service, "data-offered": String(s.offered) },
        el("span", { class: "pill" }, s.label),
        s.offered
          ? [el("b", { "data-field": "count", title: "operations so far (counted over every pool)" }, fmtInt(s.operations)),
             s.failed ? el("span", { class: "bad" }, " (" + fmtInt(s.failed) + " failed)") : null,
             el("span", { class: "why", "data-field": "why" }, s.why)]
          : [el("span", { class: "state" }, s.known ? "not offered" : "unknown"),
             el("span", { class: "why", "data-field": "why" }, "— " + s.why)])))));
    $("#services").replaceChildren(...(blocks.length ? blocks : [el("span", { class: "muted" }, "No pool enabled.")]));
  }

  // -- recent failures --------------------------------------------------------------
  function failures(list) {
    const rows = list.map((f) => el("tr", { "data-failure": f.id, "data-status": f.status_hex },
      timeCell(f.at_utc),
      el("td", { "data-field": "sender" }, el("b", { class: "mono" }, f.calling_ae || "(none)"),
        el("div", { class: "sub mono" }, f.source_ip || "–")),
      el("td", { class: "mono uid", "data-field": "study", title: f.study_uid || "" }, f.study_uid || "–",
        f.sop_instance_uid ? el("div", { class: "sub uid", title: f.sop_instance_uid }, "SOP " + f.sop_instance_uid) : null),
      el("td", { "data-field": "backend" }, f.backend ? el("b", {}, f.backend) : el("span", { class: "muted" }, "none chosen"),
        el("div", { class: "sub" }, f.pool)),
      el("td", { "data-field": "status" }, el("b", { class: "bad mono" }, f.status_hex), " ",
        el("span", { "data-field": "meaning" }, f.meaning),
        f.service && f.service !== "C-STORE" ? el("div", { class: "sub", "data-field": "service" }, f.service) : null,
        el("div", { class: "sub", "data-field": "origin" }, f.origin === "backend"
          ? "answered by the backend" : "answered by SynthIQ" + (f.cause ? ": " + f.cause : ""))),
      el("td", { class: "comment", "data-field": "comment" }, f.comment || el("span", { class: "muted" }, "(none)"))));
    $("#failures").replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colSpan: 6, class: "empty" }, "No failed operations recorded."))]));
  }

  // -- the study ledger's verdicts ----------------------------------------------------
  const VERDICT_MEANING = {
    whole: "its backend holds every instance SynthIQ relayed and every instance any other backend holds",
    split: "another backend holds an instance its backend lacks: consolidate it",
    missing: "an instance SynthIQ relayed and a backend acknowledged is on no backend",
    unverified: "not quiet yet, or no backend could be asked",
  };

  function verdictTag(entry) {
    const v = entry.verdict;
    return el("span", { class: "verdict " + v, "data-verdict": v, title: VERDICT_MEANING[v] || "" }, v);
  }

  function heldText(held) {
    const parts = Object.entries(held || {}).sort(([a], [b]) => (a < b ? -1 : 1)).map(([b, n]) => b + " " + fmtInt(n));
    return parts.length ? parts.join(", ") : "–";
  }

  function verifiedCell(entry) {
    return entry.verified_utc ? timeCell(entry.verified_utc) : el("td", { class: "muted" }, "not yet");
  }

  function notWhole(page) {
    const rows = page.results.map((s) => el("tr", { "data-study": s.study_uid, "data-verdict": s.verdict },
      el("td", { class: "mono uid", title: s.study_uid, "data-field": "study" }, s.study_uid),
      el("td", { "data-field": "verdict" }, verdictTag(s)),
      el("td", { "data-field": "pool" }, s.pool),
      el("td", { "data-field": "backend" }, el("b", {}, s.backend)),
      el("td", { class: "num", "data-field": "acknowledged" }, fmtInt(s.acknowledged)),
      el("td", { class: "mono", "data-field": "held" }, heldText(s.held)),
      verifiedCell(s)));
    $("#not-whole").replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colSpan: 7, class: "empty" }, "No study found split or missing."))]));
    $("#not-whole-hint").textContent = page.count
      ? fmtInt(page.count) + (page.count === 1 ? " study" : " studies") +
        (page.count > page.results.length ? ", the first " + page.results.length + " shown" : "") +
        " · all of them: GET /api/studies?verdict=split|missing"
      : "verified: split over backends, or missing an instance SynthIQ relayed (docs/ledger.md)";
  }

  // -- rejected associations ---------------------------------------------------------
  function rejections(list) {
    const rows = list.map((r) => el("tr", { "data-reason": r.reason, "data-source": r.source_ip,
                                            class: r.rejected ? "" : "refused-service" },
      el("td", { "data-field": "who" }, el("b", { class: "mono" }, r.calling_ae || "–"),
        el("span", { class: "muted" }, " → "), el("span", { class: "mono", "data-field": "called" }, r.called_ae || "–")),
      el("td", { class: "mono", "data-field": "from" }, r.source_ip || "–"),
      el("td", { "data-field": "why" }, el("b", {}, r.reason_label),
        r.detail ? el("div", { class: "sub", "data-field": "detail" }, r.detail) : null),
      el("td", { class: "num", "data-field": "count" }, fmtInt(r.count)),
      timeCell(r.last_seen_utc),
      el("td", { title: r.first_seen_utc }, age(r.first_seen_utc))));
    $("#rejections").replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colSpan: 6, class: "empty" }, "No association rejected."))]));
  }

  function strip(status, poolList) {
    const items = [];
    for (const pool of poolList) {
      if (pool.degraded.length) items.push(["bad", "Pool ", el("b", {}, pool.id), " degraded"]);
    }
    const db = status.database;
    items.push([db.ok ? "" : "bad", "Database ", el("b", {}, db.ok ? "reachable" : "unreachable")]);
    const hb = status.heartbeat;
    const ages = hb.pools.map((p) => p.pool + " " + age(p.last_round_utc)).join(", ");
    items.push([hb.stale ? "warn" : "", "Heartbeats ", el("b", {}, hb.stale ? "stale" : "fresh"),
      (hb.mode ? " · " + hb.mode : "") + " · every " + hb.interval_seconds + " s · last round " + (ages || "–")]);
    for (const l of status.listeners) {
      items.push([l.accepting ? "" : "bad", "Listener ", el("b", {}, l.pool), " " + l.ae_title + " :" + l.port + " ",
        l.accepting ? "accepting" : "not accepting"]);
    }
    for (const pool of status.pools_without_listener) {
      items.push(["warn", "Listener ", el("b", {}, pool), " none running"]);
    }
    $("#strip").replaceChildren(...items.map(([kind, ...parts]) => el("span", { class: "item " + kind }, parts)));
  }

  // -- pools ------------------------------------------------------------------------
  // Unhealthy (a failed heartbeat) or stale (no recent good one): the router sends it no new studies.
  function isDown(b) {
    return b.health.state === "unhealthy" || b.health.state === "stale";
  }

  function healthCell(b) {
    const h = b.health;
    if (isDown(b)) {
      const since = h.down_since_utc
        ? "down for " + duration(h.down_since_utc)
        : "never answered · checked " + age(h.last_check_utc);
      const why = h.last_error || (h.state === "stale" ? "no heartbeat result since " + fmtTime(h.last_ok_utc) + " UTC" : "no reason given");
      return el("td", { class: "health" }, el("span", { class: "dot " + h.state }), h.state,
        el("div", { class: "since", "data-field": "down-since" }, since),
        el("div", { class: "reason", "data-field": "down-reason" }, why));
    }
    return el("td", { class: "health" }, el("span", { class: "dot " + h.state }), h.state,
      el("div", { class: "sub" }, "ok " + age(h.last_ok_utc)));
  }

  function loadCell(b) {
    if (isDown(b) || b.health.load === null || b.health.load === undefined) {
      const why = isDown(b) ? "the backend is down: its last reported load is not its load now"
        : b.load_reported ? "no load reported yet" : "liveness mode: load is not reported";
      return el("td", { class: "num", "data-field": "load" }, el("span", { class: "unknown", title: why }, "unknown"));
    }
    const pct = Math.round(b.health.load * 100);
    const depth = b.health.queue_depth !== null ? b.health.queue_depth + " / " + (b.health.capacity ?? "?") : "";
    return el("td", { class: "num", "data-field": "load" },
      el("div", { class: "bar", title: depth }, el("i", { style: "" })),
      pct + "%", el("div", { class: "sub" }, depth));
  }

  function stateCell(b) {
    const tags = [];
    if (!b.enabled) tags.push(el("span", { class: "tag off" }, "disabled"));
    else if (b.draining) tags.push(el("span", { class: "tag drain" }, "draining"));
    else if (isDown(b)) tags.push(el("span", { class: "tag down", title: "takes no new studies; its bound studies fail until it is back" }, "out of service"));
    else if (b.health.state === "unknown") tags.push(el("span", { class: "tag off" }, "no heartbeat yet"));
    else tags.push(el("span", { class: "tag on" }, "in service"));
    return el("td", { class: "state" }, tags);
  }

  function actionCell(b) {
    if (!b.enabled) return el("td", {});
    const action = b.draining ? "enable" : "drain";
    const button = el("button", { class: "action " + action, type: "button" }, b.draining ? "Undrain" : "Drain");
    button.addEventListener("click", async () => {
      const question = b.draining
        ? "Let " + b.id + " take new studies again?"
        : "Drain " + b.id + "? It takes no new studies but keeps receiving its bound ones.";
      if (!window.confirm(question)) return;
      button.disabled = true;
      await fetch("/api/backends/" + encodeURIComponent(b.id) + "/" + action, {
        method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() },
      });
      refresh();
    });
    return el("td", {}, button);
  }

  const COLUMNS = [["Backend"], ["Mode"], ["Health"], ["Load", true], ["Weight", true], ["State"],
    ["Forwarded", true], ["Failed", true], ["Mean forward", true], [""]];

  function pools(list) {
    const cards = list.map((pool) => {
      const rows = pool.backends.map((b) => {
        const c = b.counters;
        const row = el("tr", { "data-backend": b.id, class: isDown(b) ? "down" : b.draining ? "draining" : "" },
          el("td", {}, el("b", {}, b.id), el("div", { class: "sub" }, b.ae_title + "@" + b.host + ":" + b.port)),
          el("td", {}, el("span", { class: "mode" }, b.health_mode)),
          healthCell(b),
          loadCell(b),
          el("td", { class: "num" }, b.weight),
          stateCell(b),
          el("td", { class: "num", "data-field": "forwarded" }, fmtInt(c.forwarded)),
          el("td", { class: "num" + (c.failed ? " bad" : ""), "data-field": "failed" }, fmtInt(c.failed)),
          el("td", { class: "num" }, c.mean_forward_ms === null ? "–" : c.mean_forward_ms.toFixed(1) + " ms"),
          actionCell(b));
        const bar = row.querySelector(".bar i");
        if (bar) bar.style.width = Math.min(100, Math.round(b.health.load * 100)) + "%";
        return row;
      });
      return el("section", { class: "card pool", "data-pool": pool.id },
        el("h2", {}, "Pool ", el("b", {}, pool.id),
          el("span", { class: "hint" }, pool.ae_title + " on " + pool.host + ":" + pool.port + (pool.enabled ? "" : " — disabled"))),
        el("div", { class: "scroll" }, el("table", { class: "grid" },
          el("thead", {}, el("tr", {}, COLUMNS.map(([h, num]) => el("th", { class: num ? "num" : "" }, h)))),
          el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colSpan: 10, class: "empty" }, "No backends."))))));
    });
    $("#pools").replaceChildren(...(cards.length ? cards : [el("section", { class: "card" }, el("p", { class: "empty" }, "No pools configured."))]));
  }

  // -- decisions --------------------------------------------------------------------
  function decisions(list) {
    const rows = list.map((d) => el("tr", { "data-study": d.study_uid },
      el("td", { class: "mono" }, fmtTime(d.at_utc)),
      el("td", {}, pill(d.tier)),
      el("td", { class: "mono uid", title: d.study_uid }, d.study_uid),
      el("td", {}, d.pool),
      el("td", {}, el("b", {}, d.backend)),
      el("td", { class: "mono" }, d.calling_ae || "–"),
      el("td", {}, d.modality || "–")));
    $("#decisions").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colSpan: 7, class: "empty" }, "No decisions yet."))]));
  }

  // -- rate charts ------------------------------------------------------------------
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART_W = 300;
  const CHART_H = 90;
  const PALETTE = ["#2f6fb5", "#2e8b57", "#7b4fc2", "#c2571a", "#5f6b78", "#b83280"];
  const RATE_SLOTS = 90;  // the samples each runproxy keeps (routing/telemetry.py RATE_SAMPLES)

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    return node;
  }

  function fmtRate(v) {
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  // One chart: a polyline per series over the window [start, start + spanMs]; x is time, y is the rate.
  function chart(name, unit, points, series, { start, spanMs }) {
    const peak = Math.max(0, ...series.flatMap((s) => points.map(s.value)));
    const top = peak > 0 ? peak * 1.1 : 1;
    const box = svg("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, preserveAspectRatio: "none", class: "plot", role: "img",
      "aria-label": name + " over the last " + Math.round(spanMs / 60000) + " minutes" });
    box.append(svg("line", { x1: 0, y1: CHART_H - 0.5, x2: CHART_W, y2: CHART_H - 0.5, class: "axis" }));
    for (const s of series) {
      const xy = points.map((p) => {
        const x = ((new Date(p.t).getTime() - start) / spanMs) * CHART_W;
        const y = CHART_H - (s.value(p) / top) * CHART_H;
        return Math.max(0, x).toFixed(1) + "," + y.toFixed(1);
      });
      box.append(svg("polyline", { points: xy.join(" "), stroke: s.color, "data-series": s.name, class: "line" }));
    }
    const latest = points.length ? series[0].value(points[points.length - 1]) : 0;
    return el("figure", { class: "chart", "data-chart": name },
      el("figcaption", {}, name, el("b", {}, fmtRate(latest) + " " + unit),
        el("span", { class: "hint" }, "peak " + fmtRate(peak))),
      box,
      series.length > 1
        ? el("div", { class: "legend" }, series.map((s) => el("span", {}, el("i", { style: "background:" + s.color }), s.name)))
        : null);
  }

  function rateCharts(status) {
    const rates = status.rates;
    const spanMs = rates.interval_seconds * RATE_SLOTS * 1000;
    $("#rates-hint").textContent = "last " + Math.round(spanMs / 60000) + " minutes, per " +
      rates.interval_seconds + " s";
    if (rates.points.length < 2) return;  // keep "waiting for two samples"
    const frame = { start: new Date(status.generated_utc).getTime() - spanMs, spanMs };
    const backendIds = [...new Set(rates.points.flatMap((p) => Object.keys(p.backends)))].sort();
    const perBackend = (field) => backendIds.map((id, n) => ({
      name: id, color: PALETTE[n % PALETTE.length], value: (p) => (p.backends[id] || {})[field] || 0,
    }));
    const total = (field) => ({ name: "total", color: "#1d2733", value: (p) => p[field] });
    const charts = [
      chart("Instances", "/s", rates.points, [total("instances_per_s"), ...perBackend("instances_per_s")], frame),
      chart("Relayed", "MB/s", rates.points, [total("mb_per_s"), ...perBackend("mb_per_s")], frame),
      chart("Failures", "/s", rates.points, [total("failures_per_s")], frame),
    ];
    $("#rates").replaceChildren(...charts);
  }

  // -- calling AE titles -----------------------------------------------------------
  function callingAes(list) {
    const rows = list.map((a) => el("tr", { "data-calling-ae": a.calling_ae },
      el("td", { class: "mono" }, el("b", {}, a.calling_ae || "(none)")),
      el("td", { class: "num" }, fmtInt(a.studies)),
      el("td", { title: a.last_seen_utc }, age(a.last_seen_utc)),
      el("td", {}, a.backends.join(", ")),
      el("td", { class: "num" + (a.rejected ? " bad" : ""), "data-field": "rejected",
                 title: a.rejected_last_utc ? "last rejected " + age(a.rejected_last_utc) : "" }, fmtInt(a.rejected))));
    $("#calling-aes").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colSpan: 5, class: "empty" }, "No studies routed yet."))]));
  }

  // -- study lookup -----------------------------------------------------------------
  function ledgerCells(entry) {
    if (!entry) {
      return [el("td", { "data-field": "verdict", class: "muted" }, "unknown"), el("td", { class: "num" }, "–"),
        el("td", { "data-field": "held" }, "–")];
    }
    return [
      el("td", { "data-field": "verdict", title: entry.verified_utc ? "verified " + fmtTime(entry.verified_utc) +
        " UTC · " + age(entry.verified_utc) : "not verified yet" }, verdictTag(entry)),
      el("td", { class: "num", "data-field": "acknowledged" }, fmtInt(entry.acknowledged)),
      el("td", { class: "mono", "data-field": "held" }, heldText(entry.held)),
    ];
  }

  async function lookupStudy(event) {
    event.preventDefault();
    const uid = $("#study-uid").value.trim();
    const out = $("#study-result");
    if (!uid) return;
    if (!/^[0-9.]{1,64}$/.test(uid)) {
      out.replaceChildren(el("p", { class: "lookup-miss" }, "Not a Study Instance UID: digits and dots only."));
      return;
    }
    out.replaceChildren(el("p", { class: "muted" }, "Looking up…"));
    let page;
    try {
      page = await getJSON("/api/affinity?page_size=10&search=" + encodeURIComponent(uid));
    } catch (err) {
      out.replaceChildren(el("p", { class: "lookup-miss" }, "Lookup failed: " + (err.message || err)));
      return;
    }
    if (page.count === 0) {
      out.replaceChildren(el("p", { class: "lookup-miss", "data-lookup": "not-found" },
        "Not found: no study bound with this UID (or beginning with it)."));
      return;
    }
    // An exact match first; a prefix may match other studies too.
    const results = [...page.results].sort((a, b) => (b.study_uid === uid) - (a.study_uid === uid));
    // The ledger's verdict of each study found, by pool (a study absent from the ledger: none).
    const ledger = {};
    await Promise.all([...new Set(results.map((r) => r.study_uid))].map(async (studyUid) => {
      try {
        const study = await getJSON("/api/studies/" + encodeURIComponent(studyUid));
        for (const entry of study.pools) ledger[studyUid + " " + entry.pool] = entry;
      } catch (err) { /* not in the ledger (404) or not reachable: shown as unknown */ }
    }));
    const rows = results.map((r) => el("tr", { "data-study": r.study_uid, class: r.study_uid === uid ? "exact" : "" },
      el("td", { class: "mono uid", title: r.study_uid }, r.study_uid),
      el("td", {}, r.pool),
      el("td", { "data-field": "backend" }, el("b", {}, r.backend)),
      el("td", { class: "num", "data-field": "instances" }, fmtInt(r.instance_count)),
      el("td", { title: r.first_seen_utc }, fmtTime(r.first_seen_utc) + " · " + age(r.first_seen_utc)),
      el("td", { title: r.last_seen_utc }, fmtTime(r.last_seen_utc) + " · " + age(r.last_seen_utc)),
      el("td", { "data-field": "commitment" }, r.committed
        ? el("span", { class: "tag on" }, "committed " + age(r.committed_utc))
        : el("span", { class: "tag off" }, "not committed")),
      ledgerCells(ledger[r.study_uid + " " + r.pool])));
    out.replaceChildren(...[
      el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, ["Study Instance UID", "Pool", "Backend", "Instances", "First seen (UTC)",
          "Last seen (UTC)", "Commitment", "Verdict", "Acknowledged", "Held (by backend)"].map(
          (h) => el("th", { class: h === "Instances" || h === "Acknowledged" ? "num" : "" }, h)))),
        el("tbody", {}, rows)),
      page.count > results.length
        ? el("p", { class: "sub" }, page.count + " studies begin with this; the 10 seen most recently are shown.")
        : null,
    ].filter(Boolean));
  }

  // -- loop -------------------------------------------------------------------------
  let lastStatus = null;
  let lastPools = null;
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    try {
      const [status, poolList, activity, failed, rejected, exceptions] = await Promise.all([
        getJSON("/api/status"), getJSON("/api/pools"), getJSON("/api/activity?limit=25"),
        getJSON("/api/failures?limit=25"), getJSON("/api/rejections?limit=25"), getJSON("/api/studies?page_size=25"),
      ]);
      lastStatus = status;
      lastPools = poolList;
      TIERS = status.tiers.map((t) => t.id);
      TIER_LABEL = Object.fromEntries(status.tiers.map((t) => [t.id, t.label]));
      banners(status, null, poolList);
      counters(status);
      services(poolList);
      failures(failed.results);
      rejections(rejected.results);
      notWhole(exceptions);
      strip(status, poolList);
      pools(poolList);
      rateCharts(status);
      callingAes(status.calling_aes);
      decisions(activity.results);
      $("#updated").textContent = "updated " + fmtTime(status.generated_utc) + " UTC · " +
        fmtLocal(status.generated_utc) + " " + LOCAL_ZONE;
      $("#updated").classList.remove("stale");
    } catch (err) {
      banners(lastStatus, err, lastPools);
      $("#updated").classList.add("stale");
    } finally {
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#study-lookup").addEventListener("submit", lookupStudy);
    refresh();
  });
})();
