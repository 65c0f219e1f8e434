#!/bin/sh
# Creates (or extends) the user store of server.lua: an SQLite file with one
# table, userauth(username TEXT PRIMARY KEY, hashpass TEXT), the hashes
# made by `luasmtpd --hash-password argon2id` (argon2id, as aiosmtpd's
# original example). The password is read from standard input (not echoed
# on a terminal) and never appears on a command line.
#
#   ./make_user_db.sh users.db alice          # asks for alice's password
#   printf '%s\n' "$PW" | ./make_user_db.sh users.db alice
set -eu
if [ $# -ne 2 ]; then
  echo "usage: $0 DB USER   (the password on standard input)" >&2
  exit 2
fi
db=$1
user=$2
LUASMTPD=${LUASMTPD:-luasmtpd}
hash=$("$LUASMTPD" --hash-password argon2id)
# sqlite3's own quoting for the values: double any single quote.
q_user=$(printf '%s' "$user" | sed "s/'/''/g")
sqlite3 "$db" <<SQL
CREATE TABLE IF NOT EXISTS userauth (username TEXT PRIMARY KEY, hashpass TEXT);
INSERT OR REPLACE INTO userauth (username, hashpass) VALUES ('$q_user', '$hash');
SQL
echo "$user added to $db"
