-- `streamflow data prune` drops a superseded revision's tables but keeps its row: the ingestion
-- history stays whole, and a reproduction that needs the revision says it was pruned, and when.
ALTER TABLE snapshot_revisions ADD COLUMN pruned_at timestamptz;
ALTER TABLE snapshot_revisions ADD CONSTRAINT snapshot_revisions_prune_superseded
    CHECK (pruned_at IS NULL OR superseded_at IS NOT NULL);
