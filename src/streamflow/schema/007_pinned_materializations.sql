-- `streamflow features materialize --revision N` loads a month at an earlier revision than the one it
-- serves. The log says which (as_of -> revision, {} for the revisions served), so the next
-- materialization after a pinned one (or a pinned one after a plain one) reloads the full window.
ALTER TABLE materializations ADD COLUMN pins jsonb NOT NULL DEFAULT '{}'::jsonb;
