-- A dry run (`"dry_run": true` on an erasure, rectification or restriction) runs every phase,
-- counts what would change and changes nothing. The flag is a column of its own, not a key of
-- `params`: retention clears `params` when it minimises a request, and a dry run must stay one.
ALTER TABLE request ADD COLUMN dry_run boolean NOT NULL DEFAULT false;
