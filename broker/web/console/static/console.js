// The console's live pages: one EventSource per page, named by the page's
// data-live attribute; each message patches the page in place. Values are
// only ever set as text, never as HTML. No timers: the server pushes.
"use strict";

(function () {
  // Forms that undo much ask first.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  const live = document.body.dataset.live;
  if (!live || !window.EventSource) return;
  const status = document.getElementById("live-status");
  const source = new EventSource(live);

  function say(text) { if (status) status.textContent = text; }
  source.addEventListener("open", () => say("live"));
  source.addEventListener("error", () => {
    say(source.readyState === EventSource.CLOSED ? "not live: reload the page" : "reconnecting…");
  });
  source.addEventListener("reload", () => window.location.reload());

  function byData(root, attribute, value) {
    for (const element of root.querySelectorAll("[" + attribute + "]")) {
      if (element.getAttribute(attribute) === value) return element;
    }
    return null;
  }
  function pathOf(name) { return "/resources/" + encodeURIComponent(name); }

  // ---- the inventory and a resource's page
  function cellText(column, row) {
    if (column === "state") return row.state_text;
    if (column.startsWith("field:")) return row.fields[column.slice(6)] || "";
    return row[column] || "";
  }
  function fillCell(cell, column, row) {
    if (column === "name") {
      let link = cell.querySelector("a");
      if (!link) { link = document.createElement("a"); cell.replaceChildren(link); }
      link.href = pathOf(row.name);
      link.textContent = row.name;
    } else if (column === "state") {
      const badge = document.createElement("span");
      badge.className = "state state-" + row.state;
      badge.textContent = row.state_text;
      cell.replaceChildren(badge);
    } else {
      cell.textContent = cellText(column, row);
    }
  }
  function passes(table, row) {
    const state = table.dataset.stateFilter, search = table.dataset.search;
    if (state && row.state !== state) return false;
    if (search && !row.name.toLowerCase().includes(search.toLowerCase())) return false;
    return true;
  }
  function recount(table) {
    const kind = table.dataset.kind;
    const empty = byData(document, "data-empty-for", kind);
    const rows = table.tBodies[0].rows;
    if (empty) empty.hidden = rows.length > 0;
    const counts = byData(document, "data-counts-for", kind);
    if (!counts || table.dataset.stateFilter || table.dataset.search) return;
    const tally = { "free": 0, "held": 0, "reserved": 0, "out-of-service": 0 };
    for (const tr of rows) tally[tr.dataset.state] = (tally[tr.dataset.state] || 0) + 1;
    counts.textContent = tally["free"] + " free · " + tally["held"] + " held · " +
      tally["reserved"] + " reserved · " + tally["out-of-service"] + " out of service";
  }
  function patchTable(row) {
    for (const table of document.querySelectorAll("table.resources")) {
      const existing = byData(table.tBodies[0], "data-name", row.name);
      if (table.dataset.kind !== row.kind || !passes(table, row)) {
        if (existing) { existing.remove(); recount(table); }
        continue;
      }
      let tr = existing;
      if (!tr) {
        tr = table.tBodies[0].insertRow();
        tr.dataset.name = row.name;
        for (const th of table.tHead.rows[0].cells) {
          const cell = tr.insertCell();
          cell.dataset.column = th.dataset.column;
        }
      }
      tr.dataset.state = row.state;
      for (const cell of tr.cells) fillCell(cell, cell.dataset.column, row);
      recount(table);
    }
  }
  function removeFromTables(name) {
    for (const table of document.querySelectorAll("table.resources")) {
      const existing = byData(table.tBodies[0], "data-name", name);
      if (existing) { existing.remove(); recount(table); }
    }
  }
  function bind(name, text) {
    for (const element of document.querySelectorAll("[data-bind]")) {
      if (element.dataset.bind === name) element.textContent = text;
    }
  }
  function patchDetails(row) {
    if (!document.querySelector("[data-state-class]")) return;
    for (const key of ["state_text", "owner", "group", "comment", "fencing_token",
                       "reserved_for", "service_reason"]) bind(key, row[key] || "");
    const badge = document.querySelector("[data-state-class]");
    badge.className = "state state-" + row.state;
    for (const element of document.querySelectorAll("[data-field]")) {
      element.textContent = row.fields[element.dataset.field] || "";
    }
    const lease = row.lease || {};
    for (const key of ["lease_id", "holder", "since", "expires", "ttl"]) {
      if (row.lease || row.lease_ids.length === 0) bind("lease." + key, lease[key] || "");
    }
    const when = {
      held: row.lease_ids.length > 0,
      free: row.lease_ids.length === 0,
      usable: row.state !== "out-of-service",
      unusable: row.state === "out-of-service",
    };
    for (const element of document.querySelectorAll("[data-when]")) {
      element.hidden = !when[element.dataset.when];
    }
    const leaseId = row.lease_ids[0] || "";
    for (const form of document.querySelectorAll("form.revoke")) {
      form.action = "/leases/" + encodeURIComponent(leaseId) + "/revoke";
    }
  }
  source.addEventListener("resource", (message) => {
    const row = JSON.parse(message.data);
    patchTable(row);
    patchDetails(row);
  });
  source.addEventListener("resource-gone", (message) => {
    const gone = JSON.parse(message.data);
    removeFromTables(gone.name);
    if (document.querySelector("[data-state-class]")) bind("state_text", "deleted");
  });

  // ---- live leases
  const leases = document.getElementById("leases");
  source.addEventListener("lease", (message) => {
    if (!leases) return;
    const lease = JSON.parse(message.data);
    const body = leases.tBodies[0];
    let tr = byData(body, "data-lease", lease.lease_id);
    if (!lease.active) {
      if (tr) tr.remove();
    } else {
      if (!tr) {
        tr = body.insertRow(0);
        tr.dataset.lease = lease.lease_id;
        for (const key of ["lease_id", "holder", "principal", "resources", "since", "expires", "ttl"]) {
          tr.insertCell().dataset.bind = key;
        }
        const template = document.getElementById("revoke-template");
        if (template) {
          const cell = tr.insertCell();
          cell.append(template.content.cloneNode(true));
          cell.querySelector("form").action = "/leases/" + encodeURIComponent(lease.lease_id) + "/revoke";
        }
      }
      for (const cell of tr.cells) {
        if (cell.dataset.bind) cell.textContent = lease[cell.dataset.bind] || "";
      }
    }
    document.getElementById("leases-empty").hidden = body.rows.length > 0;
  });

  // ---- the queue
  const queue = document.getElementById("queue");
  source.addEventListener("queue", (message) => {
    if (!queue) return;
    const waiters = JSON.parse(message.data).waiters;
    const body = queue.tBodies[0];
    body.replaceChildren();
    for (const waiter of waiters) {
      const tr = body.insertRow();
      for (const text of [waiter.position + 1, waiter.holder, waiter.principal, waiter.priority,
                          waiter.requirements.join("; "), waiter.blocked, waiter.since,
                          waiter.deadline]) {
        tr.insertCell().textContent = String(text);
      }
    }
    document.getElementById("queue-empty").hidden = waiters.length > 0;
  });

  // ---- the event log, and a resource's history
  const events = document.getElementById("events");
  source.addEventListener("event", (message) => {
    if (!events) return;
    const event = JSON.parse(message.data);
    const wanted = events.dataset;
    if ((wanted.filterResource && wanted.filterResource !== event.resource) ||
        (wanted.filterKind && wanted.filterKind !== event.kind) ||
        (wanted.filterActor && wanted.filterActor !== event.actor) ||
        (wanted.filterLease && wanted.filterLease !== event.lease_id) ||
        (wanted.filterType && wanted.filterType !== event.type)) return;
    const tr = events.tBodies[0].insertRow();
    for (const key of ["sequence", "time", "type", "actor"]) tr.insertCell().textContent = event[key];
    const where = tr.insertCell();
    if (event.resource) {
      const link = document.createElement("a");
      link.href = pathOf(event.resource);
      link.textContent = event.resource;
      where.append(link);
    }
    const lease = document.createElement("code");
    lease.textContent = event.lease_id;
    tr.insertCell().append(lease);
    tr.insertCell().textContent = event.reason;
    const empty = document.getElementById("events-empty");
    if (empty) empty.hidden = true;
  });
})();
