-- When each scheduled job runs next, as planned by the daemon that runs it, so the console can
-- show it without reading the daemons' configuration. One row per daemon and item (`backup` and
-- a store name; `retention` and `run`); a NULL `next_at` means the schedule is off. Each look at
-- a schedule (every 30 seconds) overwrites its row; with several processes, the latest wins.
CREATE TABLE schedule_plan (
    daemon      text NOT NULL,
    item        text NOT NULL,
    next_at     timestamptz,
    planned_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (daemon, item)
);
