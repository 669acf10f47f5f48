-- The identity closure of a request (resolve rounds across stores; kinds and counts only,
-- never values, so it outlives the minimisation of `identities`), and whether any store held
-- anything of the subject, set when the request completes (NULL before, and for requests
-- completed before this column existed).
ALTER TABLE request ADD COLUMN closure jsonb;
ALTER TABLE request ADD COLUMN found boolean;
