-- Change notifications of the online store: every statement that writes one of Feast's online tables
-- (StreamFlow's bulk materialize, Feast's own writers, a TRUNCATE) sends NOTIFY streamflow_online with
-- the table name when its transaction commits. The API drops its in-memory copy of online features on
-- it. features/store.py attaches the trigger to each online table (the tables belong to Feast).
CREATE OR REPLACE FUNCTION streamflow_online_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('streamflow_online', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
