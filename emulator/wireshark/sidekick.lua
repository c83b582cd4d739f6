-- Wireshark dissector for the Sidekick sync protocol, version 1 (docs/PROTOCOL.md of sidekick-testbed).
--
-- Install: `sidekick wireshark --install` copies this file into your personal Lua plugins folder;
-- or run `tshark -X lua_script:$(sidekick wireshark --path) -r capture.pcapng`.
--
-- Raw binding: TCP port 7400, and a heuristic that recognises a session on any port by its first
-- frame header. Frames are reassembled across TCP segments. HTTP binding: the bodies of content type
-- application/x-sidekick-frames are decoded as frames (HTTP on port 7401, or wherever Wireshark's
-- HTTP heuristic finds it). Every header field, message field and record field is shown; the
-- CRC-32 is checked; every check of the reference decoder (section 3's order) raises expert info
-- with the spec's error code and requirement id; a stream or body that ends inside a frame is
-- TRUNCATED (R-FRAME-10), shown on the FIN or RST (or on the HTTP body). Sequence numbers are
-- followed per direction (BAD_SEQUENCE, R-FRAME-8).

local sk = Proto("sidekick", "Sidekick sync protocol")
local sk_end = Proto("sidekick_eos", "Sidekick end of stream")

local HEADER_LEN = 14
local TRAILER_LEN = 4
local OVERHEAD = HEADER_LEN + TRAILER_LEN
local MAX_MAX_FRAME = 1048576
local RAW_PORT = 7400
local HTTP_PORT = 7401

local MESSAGES = {
  [0x01] = "HELLO", [0x02] = "CHALLENGE", [0x03] = "AUTH", [0x04] = "HELLO_OK",
  [0x10] = "PUSH", [0x11] = "PUSH_ACK", [0x12] = "COMMIT", [0x13] = "DURABLE", [0x14] = "CONFLICT",
  [0x20] = "PULL", [0x21] = "RECORDS", [0x22] = "PULL_END", [0x23] = "PULL_ACK",
  [0x30] = "BLOB_QUERY", [0x31] = "BLOB_CHUNK", [0x32] = "BLOB_ACK",
  [0x40] = "PING", [0x41] = "PONG", [0x7E] = "ERROR", [0x7F] = "BYE",
}
local ERRORS = {
  [0x0101] = "BAD_MAGIC", [0x0102] = "BAD_VERSION", [0x0103] = "BAD_CRC", [0x0104] = "FRAME_TOO_LARGE",
  [0x0105] = "UNKNOWN_TYPE", [0x0106] = "BAD_FLAGS", [0x0107] = "BAD_SEQUENCE", [0x0108] = "TRUNCATED",
  [0x0201] = "MALFORMED_PAYLOAD", [0x0202] = "TRAILING_BYTES", [0x0203] = "BAD_FIELD",
  [0x0301] = "UNEXPECTED_MESSAGE", [0x0302] = "VERSION_UNSUPPORTED", [0x0303] = "AUTH_FAILED",
  [0x0304] = "SESSION_CLOSED",
  [0x0401] = "BATCH_TOO_LARGE", [0x0402] = "LSN_ORDER", [0x0403] = "BAD_ANCHOR", [0x0404] = "BLOB_INCOMPLETE",
  [0x0405] = "BLOB_OFFSET",
  [0x0501] = "BUSY", [0x0502] = "TIMEOUT", [0x0503] = "SHUTTING_DOWN", [0x0504] = "INTERNAL", [0x0505] = "STORAGE",
  [0x0506] = "BUDGET_EXCEEDED",
}
local KINDS = { [1] = "CONTACT", [2] = "EVENT", [3] = "TODO", [4] = "NOTE", [5] = "PHOTO" }
local CHECK_REQUIREMENT = {
  BAD_MAGIC = "R-FRAME-1", BAD_VERSION = "R-FRAME-2", UNKNOWN_TYPE = "R-FRAME-3", BAD_FLAGS = "R-FRAME-4",
  FRAME_TOO_LARGE = "R-FRAME-5", BAD_CRC = "R-FRAME-6", BAD_SEQUENCE = "R-FRAME-8", TRUNCATED = "R-FRAME-10",
  MALFORMED_PAYLOAD = "R-ENC-2", TRAILING_BYTES = "R-ENC-2", BAD_FIELD = "R-ENC-1, R-REC-1, R-MSG-2",
}

-- ------------------------------------------------------------------------------------------ fields

local F = {}
local function field(key, maker, abbr, ...)
  F[key] = maker("sidekick." .. abbr, ...)
end

-- frame header and trailer (section 3)
field("magic", ProtoField.string, "magic", "Magic", base.ASCII, "ASCII SK (R-FRAME-1)")
field("version", ProtoField.uint8, "version", "Version", base.DEC, nil, nil,
  "protocol version of this frame: 1 (R-FRAME-2, R-VER-5)")
field("type", ProtoField.uint8, "type", "Type", base.HEX, MESSAGES, nil, "message type (R-FRAME-3)")
field("flags", ProtoField.uint16, "flags", "Flags", base.HEX, nil, nil, "0 in version 1 (R-FRAME-4)")
field("seq", ProtoField.uint32, "seq", "Sequence number", base.DEC, nil, nil,
  "0, 1, 2, ... per direction and session (R-FRAME-7, R-FRAME-8)")
field("length", ProtoField.uint32, "length", "Payload length", base.DEC, nil, nil,
  "frame size is 18 + length, at most the negotiated max_frame (R-FRAME-5)")
field("payload", ProtoField.none, "payload", "Payload")
field("crc", ProtoField.uint32, "crc", "CRC-32", base.HEX, nil, nil,
  "CRC-32 (zlib) of header and payload (R-FRAME-6)")
field("crc_status", ProtoField.string, "crc.status", "CRC-32 status")
field("undecoded", ProtoField.bytes, "undecoded", "Bytes not decoded")

-- messages (section 4)
field("hello_min_version", ProtoField.uint8, "hello.min_version", "Lowest version", base.DEC)
field("hello_max_version", ProtoField.uint8, "hello.max_version", "Highest version", base.DEC)
field("hello_account", ProtoField.string, "hello.account", "Account")
field("hello_device_id", ProtoField.bytes, "hello.device_id", "Device id")
field("hello_max_frame", ProtoField.uint32, "hello.max_frame", "Largest frame the device accepts", base.DEC,
  nil, nil, "at least 1024 (R-MSG-1)")
field("challenge_version", ProtoField.uint8, "challenge.version", "Chosen version", base.DEC, nil, nil, "R-VER-2")
field("challenge_server_id", ProtoField.bytes, "challenge.server_id", "Server id")
field("challenge_server_nonce", ProtoField.bytes, "challenge.server_nonce", "Server nonce", base.NONE,
  "fresh for every session (R-AUTH-1)")
field("challenge_max_frame", ProtoField.uint32, "challenge.max_frame", "Negotiated max frame", base.DEC)
field("challenge_max_batch", ProtoField.uint16, "challenge.max_batch", "Max batch", base.DEC)
field("auth_device_nonce", ProtoField.bytes, "auth.device_nonce", "Device nonce", base.NONE, "R-AUTH-2")
field("auth_mac", ProtoField.bytes, "auth.mac", "Device MAC", base.NONE, "HMAC-SHA256 (section 7)")
field("hello_ok_server_id", ProtoField.bytes, "hello_ok.server_id", "Server id")
field("hello_ok_generation", ProtoField.uint64, "hello_ok.generation", "Generation", base.HEX, nil, nil,
  "the server's current generation (R-GEN-2)")
field("hello_ok_durable_lsn", ProtoField.uint64, "hello_ok.durable_lsn", "Durable watermark", base.DEC, nil, nil,
  "regression detection only, never permission to drop a copy (R-DUR-10, R-GEN-5)")
field("hello_ok_anchor", ProtoField.uint64, "hello_ok.anchor", "Anchor", base.DEC, nil, nil,
  "advanced only by PULL_ACK (R-PULL-10)")
field("hello_ok_server_mac", ProtoField.bytes, "hello_ok.server_mac", "Server MAC")
field("push_changes", ProtoField.uint16, "push.changes", "Changes", base.DEC, nil, nil,
  "at least one, strictly increasing LSNs (R-MSG-4)")
field("change", ProtoField.none, "change", "Change")
field("change_lsn", ProtoField.uint64, "change.lsn", "LSN", base.DEC, nil, nil, "applied at most once (R-IDEM-1)")
field("change_base_version", ProtoField.uint64, "change.base_version", "Base version", base.DEC)
field("push_ack_received_lsn", ProtoField.uint64, "push_ack.received_lsn", "Received through LSN", base.DEC, nil,
  nil, "received, NOT durable (R-DUR-1, R-DUR-2)")
field("commit_lsn", ProtoField.uint64, "commit.lsn", "Commit through LSN", base.DEC, nil, nil, "R-DUR-3")
field("durable_generation", ProtoField.uint64, "durable.generation", "Generation", base.HEX, nil, nil,
  "clean only if equal to this session's HELLO_OK generation (R-DUR-7, R-DUR-8)")
field("durable_durable_lsn", ProtoField.uint64, "durable.durable_lsn", "Durable through LSN", base.DEC, nil, nil,
  "the only durability confirmation (R-DUR-4)")
field("durable_assigned", ProtoField.uint16, "durable.assigned", "Assigned", base.DEC, nil, nil, "R-DUR-6")
field("assigned", ProtoField.none, "assigned", "Assigned")
field("assigned_lsn", ProtoField.uint64, "assigned.lsn", "LSN", base.DEC)
field("assigned_record_id", ProtoField.bytes, "assigned.record_id", "Record id")
field("assigned_version", ProtoField.uint64, "assigned.version", "Server version", base.DEC)
field("conflict_lsn", ProtoField.uint64, "conflict.lsn", "LSN", base.DEC, nil, nil, "R-CONFLICT-4")
field("conflict_record_id", ProtoField.bytes, "conflict.record_id", "Record id")
field("conflict_server_version", ProtoField.uint64, "conflict.server_version", "Overwritten server version", base.DEC)
field("conflict_copy_id", ProtoField.bytes, "conflict.copy_id", "Conflict copy id", base.NONE, "R-CONFLICT-2")
field("pull_anchor", ProtoField.uint64, "pull.anchor", "Anchor", base.DEC, nil, nil, "R-PULL-2, R-PULL-5")
field("pull_max_records", ProtoField.uint32, "pull.max_records", "Max records", base.DEC)
field("records_records", ProtoField.uint16, "records.records", "Records", base.DEC, nil, nil, "R-PULL-2")
field("pull_end_anchor", ProtoField.uint64, "pull_end.anchor", "Anchor", base.DEC, nil, nil, "R-PULL-3")
field("pull_end_more", ProtoField.uint8, "pull_end.more", "More", base.DEC, { [0] = "false", [1] = "true" }, nil,
  "R-PULL-12")
field("pull_ack_anchor", ProtoField.uint64, "pull_ack.anchor", "Anchor", base.DEC, nil, nil,
  "the device has committed the pull to flash (R-PULL-6, R-PULL-8)")
field("blob_query_blob_id", ProtoField.bytes, "blob_query.blob_id", "Blob id")
field("blob_chunk_blob_id", ProtoField.bytes, "blob_chunk.blob_id", "Blob id")
field("blob_chunk_offset", ProtoField.uint64, "blob_chunk.offset", "Offset", base.DEC, nil, nil, "R-BLOB-2")
field("blob_chunk_total", ProtoField.uint64, "blob_chunk.total", "Total", base.DEC, nil, nil, "R-BLOB-3")
field("blob_chunk_data_length", ProtoField.uint32, "blob_chunk.data_length", "Data length", base.DEC)
field("blob_chunk_data", ProtoField.bytes, "blob_chunk.data", "Data", base.NONE,
  "offset + length must not exceed total (R-MSG-2)")
field("blob_ack_blob_id", ProtoField.bytes, "blob_ack.blob_id", "Blob id")
field("blob_ack_have", ProtoField.uint64, "blob_ack.have", "Have", base.DEC, nil, nil,
  "received, NOT durable (R-BLOB-6)")
field("ping_nonce", ProtoField.uint64, "ping.nonce", "Nonce", base.DEC)
field("pong_nonce", ProtoField.uint64, "pong.nonce", "Nonce", base.DEC, nil, nil, "echoes the PING (R-MSG-3)")
field("error_code", ProtoField.uint16, "error.code", "Code", base.HEX, ERRORS, nil, "section 16")
field("error_fatal", ProtoField.uint8, "error.fatal", "Fatal", base.DEC, { [0] = "false", [1] = "true" }, nil,
  "R-ERR-1, R-ERR-2")
field("error_text", ProtoField.string, "error.text", "Text", base.UNICODE, "for people only (R-MSG-5)")
field("bye_reason", ProtoField.string, "bye.reason", "Reason", base.UNICODE, "for people only (R-MSG-5)")

-- records (section 5)
field("record", ProtoField.none, "record", "Record")
field("record_kind", ProtoField.uint8, "record.kind", "Kind", base.DEC, KINDS, nil, "R-REC-1")
field("record_flags", ProtoField.uint8, "record.flags", "Flags", base.HEX, nil, nil, "bits 1-7 are 0 (R-REC-1)")
field("record_deleted", ProtoField.bool, "record.deleted", "Deleted (tombstone)", 8, nil, 0x01, "R-REC-3")
field("record_record_id", ProtoField.bytes, "record.record_id", "Record id", base.NONE, "R-REC-2")
field("record_version", ProtoField.uint64, "record.version", "Version", base.DEC, nil, nil, "R-REC-4")
field("record_conflict_of_length", ProtoField.uint8, "record.conflict_of_length", "Conflict-of length", base.DEC,
  nil, nil, "0 or 16 (R-REC-1)")
field("record_conflict_of", ProtoField.bytes, "record.conflict_of", "Conflict copy of", base.NONE, "R-CONFLICT-7")
field("contact", ProtoField.none, "contact", "Contact")
field("contact_name", ProtoField.string, "contact.name", "Name", base.UNICODE)
field("contact_phones", ProtoField.uint16, "contact.phones", "Phones", base.DEC)
field("contact_phone", ProtoField.string, "contact.phone", "Phone", base.UNICODE)
field("contact_emails", ProtoField.uint16, "contact.emails", "E-mails", base.DEC)
field("contact_email", ProtoField.string, "contact.email", "E-mail", base.UNICODE)
field("event", ProtoField.none, "event", "Calendar event")
field("event_title", ProtoField.string, "event.title", "Title", base.UNICODE)
field("event_start", ProtoField.int64, "event.start", "Start", base.DEC, nil, nil, "seconds since 1970-01-01 UTC")
field("event_end", ProtoField.int64, "event.end", "End", base.DEC, nil, nil, "seconds since 1970-01-01 UTC")
field("event_location", ProtoField.string, "event.location", "Location", base.UNICODE)
field("todo", ProtoField.none, "todo", "To-do")
field("todo_title", ProtoField.string, "todo.title", "Title", base.UNICODE)
field("todo_done", ProtoField.uint8, "todo.done", "Done", base.DEC, { [0] = "false", [1] = "true" })
field("todo_due", ProtoField.int64, "todo.due", "Due", base.DEC, nil, nil, "seconds since 1970-01-01 UTC, 0 = none")
field("todo_priority", ProtoField.uint8, "todo.priority", "Priority", base.DEC, nil, nil, "0 = none")
field("note", ProtoField.none, "note", "Note")
field("note_title", ProtoField.string, "note.title", "Title", base.UNICODE)
field("note_text", ProtoField.string, "note.text", "Text", base.UNICODE)
field("photo", ProtoField.none, "photo", "Photo")
field("photo_caption", ProtoField.string, "photo.caption", "Caption", base.UNICODE)
field("photo_blob_id", ProtoField.bytes, "photo.blob_id", "Blob id")
field("photo_size", ProtoField.uint64, "photo.size", "Size", base.DEC, nil, nil, "blob bytes (R-BLOB-9)")
field("photo_sha256", ProtoField.bytes, "photo.sha256", "SHA-256", base.NONE, "of the blob (R-BLOB-9)")
field("photo_content_type", ProtoField.string, "photo.content_type", "Content type", base.UNICODE)

local field_list = {}
for _, f in pairs(F) do field_list[#field_list + 1] = f end
sk.fields = field_list

local E = {
  framing = ProtoExpert.new("sidekick.framing", "Framing error", expert.group.PROTOCOL, expert.severity.ERROR),
  crc = ProtoExpert.new("sidekick.crc.bad", "BAD_CRC", expert.group.CHECKSUM, expert.severity.ERROR),
  payload = ProtoExpert.new("sidekick.payload.bad", "Payload error", expert.group.MALFORMED, expert.severity.ERROR),
  sequence = ProtoExpert.new("sidekick.seq.bad", "BAD_SEQUENCE", expert.group.SEQUENCE, expert.severity.WARN),
  truncated = ProtoExpert.new("sidekick.truncated", "TRUNCATED", expert.group.PROTOCOL, expert.severity.ERROR),
  large = ProtoExpert.new("sidekick.large", "Frame above the negotiated max_frame", expert.group.PROTOCOL,
    expert.severity.WARN),
  error_message = ProtoExpert.new("sidekick.error", "ERROR message", expert.group.RESPONSE_CODE,
    expert.severity.NOTE),
}
sk.experts = { E.framing, E.crc, E.payload, E.sequence, E.truncated, E.large, E.error_message }
sk_end.experts = {}

local f_tcp_stream = Field.new("tcp.stream")
local f_tcp_fin = Field.new("tcp.flags.fin")
local f_tcp_rst = Field.new("tcp.flags.reset")

-- ------------------------------------------------------------------------------------------ helpers

local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      i = i + 1
    elseif c >= 0xC2 and c <= 0xDF then
      local c2 = s:byte(i + 1)
      if not c2 or c2 < 0x80 or c2 > 0xBF then return false end
      i = i + 2
    elseif c >= 0xE0 and c <= 0xEF then
      local c2, c3 = s:byte(i + 1, i + 2)
      if not c3 then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
      if c2 < lo or c2 > hi or c3 < 0x80 or c3 > 0xBF then return false end
      i = i + 3
    elseif c >= 0xF0 and c <= 0xF4 then
      local c2, c3, c4 = s:byte(i + 1, i + 3)
      if not c4 then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      if c2 < lo or c2 > hi or c3 < 0x80 or c3 > 0xBF or c4 < 0x80 or c4 > 0xBF then return false end
      i = i + 4
    else
      return false
    end
  end
  return true
end

-- Bit operations: bit32 (Lua 5.2, Wireshark up to 4.2), else the operators of Lua 5.3 and later
-- (compiled from a string, so that Lua 5.2 never parses them).
local band, bxor, rshift
if bit32 ~= nil then
  band, bxor, rshift = bit32.band, bit32.bxor, bit32.rshift
else
  band = load("return function(a, b) return a & b end")()
  bxor = load("return function(a, b) return a ~ b end")()
  rshift = load("return function(a, n) return a >> n end")()
end

-- CRC-32 (ISO-HDLC, reflected polynomial 0xEDB88320), table driven, on a Lua string
local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if band(c, 1) == 1 then c = bxor(0xEDB88320, rshift(c, 1)) else c = rshift(c, 1) end
  end
  CRC_TABLE[i] = c
end
local function crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = bxor(CRC_TABLE[band(bxor(c, s:byte(i)), 0xFF)], rshift(c, 8))
  end
  return bxor(c, 0xFFFFFFFF)
end

-- A decoding error inside a payload: raised with error(), caught by the frame dissector.
local DecodeError = {}
DecodeError.__index = DecodeError
local function fail(code, text, range)
  error(setmetatable({ code = code, text = text, range = range }, DecodeError), 0)
end

-- A cursor over a payload: tvb, next position, end of the payload.
local function cursor(tvb, pos, stop) return { tvb = tvb, pos = pos, stop = stop } end

local function need(c, n, what)
  if c.pos + n > c.stop then
    fail("MALFORMED_PAYLOAD", what .. ": payload ends inside this field", c.tvb(c.pos, c.stop - c.pos))
  end
end

local function fixed(c, tree, f, n, what)
  need(c, n, what)
  local range = c.tvb(c.pos, n)
  local item = tree:add(f, range)
  c.pos = c.pos + n
  return item, range
end

local function uint(c, tree, f, n, what)
  local item, range = fixed(c, tree, f, n, what)
  return (n == 8) and range:uint64() or range:uint(), item
end

local function boolean(c, tree, f, what)
  local item, range = fixed(c, tree, f, 1, what)
  local value = range:uint()
  if value > 1 then
    item:add_proto_expert_info(E.payload, "BAD_FIELD: " .. what .. ": boolean byte is " .. value .. ", not 0 or 1 (R-ENC-1)")
    fail("BAD_FIELD", what .. ": boolean byte is " .. value .. ", not 0 or 1", range)
  end
  return value == 1
end

local function text(c, tree, f, what)
  need(c, 2, what .. " length")
  local n = c.tvb(c.pos, 2):uint()
  need(c, 2 + n, what)
  local range = c.tvb(c.pos, 2 + n)
  local raw = n > 0 and c.tvb(c.pos + 2, n):raw() or ""
  c.pos = c.pos + 2 + n
  if not valid_utf8(raw) then
    local shown = raw:gsub("[\128-\255]", function(b) return string.format("\\x%02x", b:byte()) end)
    local item = tree:add(f, range, shown)
    item:add_proto_expert_info(E.payload, "BAD_FIELD: " .. what .. " is not valid UTF-8 (R-ENC-1)")
    fail("BAD_FIELD", what .. " is not valid UTF-8", range)
  end
  local item = tree:add(f, range, raw)
  return raw, item
end

local function hex64(value)
  local digits = value:tohex():gsub("^0+", "")
  return "0x" .. (digits ~= "" and digits or "0")
end

local function show_time(item, value)
  local ok, shown = pcall(os.date, "!%Y-%m-%d %H:%M:%S UTC", value:tonumber())
  if ok and shown then item:append_text(" (" .. shown .. ")") end
end

-- ------------------------------------------------------------------------------------------ records

local BODY = {}
BODY[1] = function(c, tree)
  local sub = tree:add(F.contact, c.tvb(c.pos, 0))
  local start = c.pos
  local name = text(c, sub, F.contact_name, "contact.name")
  for _, list in ipairs({ { F.contact_phones, F.contact_phone, "phone" }, { F.contact_emails, F.contact_email, "email" } }) do
    need(c, 2, "contact." .. list[3] .. "s")
    local count_range = c.tvb(c.pos, 2)
    local count = count_range:uint()
    local count_item = sub:add(list[1], count_range)
    c.pos = c.pos + 2
    for _ = 1, count do text(c, count_item, list[2], "contact." .. list[3]) end
  end
  sub:set_len(c.pos - start)
  sub:append_text(": " .. name)
end
BODY[2] = function(c, tree)
  local sub = tree:add(F.event, c.tvb(c.pos, 0))
  local start = c.pos
  local title = text(c, sub, F.event_title, "event.title")
  local start_item, start_range = fixed(c, sub, F.event_start, 8, "event.start")
  show_time(start_item, start_range:int64())
  local end_item, end_range = fixed(c, sub, F.event_end, 8, "event.end")
  show_time(end_item, end_range:int64())
  text(c, sub, F.event_location, "event.location")
  sub:set_len(c.pos - start)
  sub:append_text(": " .. title)
end
BODY[3] = function(c, tree)
  local sub = tree:add(F.todo, c.tvb(c.pos, 0))
  local start = c.pos
  local title = text(c, sub, F.todo_title, "todo.title")
  boolean(c, sub, F.todo_done, "todo.done")
  local due_item, due_range = fixed(c, sub, F.todo_due, 8, "todo.due")
  if due_range:int64() ~= Int64(0) then show_time(due_item, due_range:int64()) end
  uint(c, sub, F.todo_priority, 1, "todo.priority")
  sub:set_len(c.pos - start)
  sub:append_text(": " .. title)
end
BODY[4] = function(c, tree)
  local sub = tree:add(F.note, c.tvb(c.pos, 0))
  local start = c.pos
  local title = text(c, sub, F.note_title, "note.title")
  text(c, sub, F.note_text, "note.text")
  sub:set_len(c.pos - start)
  sub:append_text(": " .. title)
end
BODY[5] = function(c, tree)
  local sub = tree:add(F.photo, c.tvb(c.pos, 0))
  local start = c.pos
  local caption = text(c, sub, F.photo_caption, "photo.caption")
  fixed(c, sub, F.photo_blob_id, 16, "photo.blob_id")
  uint(c, sub, F.photo_size, 8, "photo.size")
  fixed(c, sub, F.photo_sha256, 32, "photo.sha256")
  text(c, sub, F.photo_content_type, "photo.content_type")
  sub:set_len(c.pos - start)
  sub:append_text(": " .. caption)
end

local function record(c, tree, label)
  local start = c.pos
  local sub = tree:add(F.record, c.tvb(c.pos, 0))
  sub:append_text(label)
  local kind, kind_item = uint(c, sub, F.record_kind, 1, "record.kind")
  local flags, flags_item = uint(c, sub, F.record_flags, 1, "record.flags")
  flags_item:add(F.record_deleted, c.tvb(c.pos - 1, 1))
  fixed(c, sub, F.record_record_id, 16, "record.record_id")
  local version = uint(c, sub, F.record_version, 8, "record.version")
  local length, length_item = uint(c, sub, F.record_conflict_of_length, 1, "record.conflict_of")
  if length > 0 then
    fixed(c, sub, F.record_conflict_of, length, "record.conflict_of")
  end
  if BODY[kind] == nil then
    kind_item:add_proto_expert_info(E.payload, "BAD_FIELD: unknown record kind " .. kind .. " (R-REC-1)")
    fail("BAD_FIELD", "unknown record kind " .. kind, c.tvb(start, c.pos - start))
  end
  BODY[kind](c, sub)
  sub:set_len(c.pos - start)
  sub:append_text(": " .. KINDS[kind] .. " v" .. tostring(version) .. (band(flags, 1) == 1 and " (deleted)" or ""))
  if band(flags, 0xFE) ~= 0 then
    flags_item:add_proto_expert_info(E.payload, string.format("BAD_FIELD: record flags 0x%02x has unknown bits (R-REC-1)", flags))
    fail("BAD_FIELD", string.format("record flags 0x%02x has unknown bits", flags), c.tvb(start, c.pos - start))
  end
  if length ~= 0 and length ~= 16 then
    length_item:add_proto_expert_info(E.payload, "BAD_FIELD: conflict_of is " .. length .. " bytes, not 0 or 16 (R-REC-1)")
    fail("BAD_FIELD", "conflict_of is " .. length .. " bytes, not 0 or 16", c.tvb(start, c.pos - start))
  end
end

local function list(c, tree, count_field, item_label, item_fn, what)
  local count, count_item = uint(c, tree, count_field, 2, what)
  for i = 0, count - 1 do item_fn(c, count_item, " " .. i) end
  return count
end

-- ------------------------------------------------------------------------------------------ messages

local PAYLOAD = {}
PAYLOAD[0x01] = function(c, t)
  uint(c, t, F.hello_min_version, 1, "HELLO.min_version")
  uint(c, t, F.hello_max_version, 1, "HELLO.max_version")
  local account = text(c, t, F.hello_account, "HELLO.account")
  fixed(c, t, F.hello_device_id, 16, "HELLO.device_id")
  uint(c, t, F.hello_max_frame, 4, "HELLO.max_frame")
  return "account " .. account
end
PAYLOAD[0x02] = function(c, t)
  uint(c, t, F.challenge_version, 1, "CHALLENGE.version")
  fixed(c, t, F.challenge_server_id, 16, "CHALLENGE.server_id")
  fixed(c, t, F.challenge_server_nonce, 16, "CHALLENGE.server_nonce")
  local max_frame = uint(c, t, F.challenge_max_frame, 4, "CHALLENGE.max_frame")
  uint(c, t, F.challenge_max_batch, 2, "CHALLENGE.max_batch")
  return "max_frame " .. max_frame, max_frame
end
PAYLOAD[0x03] = function(c, t)
  fixed(c, t, F.auth_device_nonce, 16, "AUTH.device_nonce")
  fixed(c, t, F.auth_mac, 32, "AUTH.mac")
end
PAYLOAD[0x04] = function(c, t)
  fixed(c, t, F.hello_ok_server_id, 16, "HELLO_OK.server_id")
  local generation = uint(c, t, F.hello_ok_generation, 8, "HELLO_OK.generation")
  local durable = uint(c, t, F.hello_ok_durable_lsn, 8, "HELLO_OK.durable_lsn")
  local anchor = uint(c, t, F.hello_ok_anchor, 8, "HELLO_OK.anchor")
  fixed(c, t, F.hello_ok_server_mac, 32, "HELLO_OK.server_mac")
  return "gen " .. hex64(generation) .. ", durable lsn " .. tostring(durable) .. ", anchor " .. tostring(anchor)
end
PAYLOAD[0x10] = function(c, t)
  local count = list(c, t, F.push_changes, "Change", function(cc, tree, label)
    local start = cc.pos
    local sub = tree:add(F.change, cc.tvb(cc.pos, 0))
    sub:append_text(label)
    local lsn = uint(cc, sub, F.change_lsn, 8, "PUSH.changes.lsn")
    uint(cc, sub, F.change_base_version, 8, "PUSH.changes.base_version")
    record(cc, sub, "")
    sub:set_len(cc.pos - start)
    sub:append_text(": lsn " .. tostring(lsn))
  end, "PUSH.changes")
  return count .. " change(s)"
end
PAYLOAD[0x11] = function(c, t)
  return "received lsn " .. tostring(uint(c, t, F.push_ack_received_lsn, 8, "PUSH_ACK.received_lsn")) .. " (not durable)"
end
PAYLOAD[0x12] = function(c, t)
  return "lsn " .. tostring(uint(c, t, F.commit_lsn, 8, "COMMIT.lsn"))
end
PAYLOAD[0x13] = function(c, t)
  local generation = uint(c, t, F.durable_generation, 8, "DURABLE.generation")
  local lsn = uint(c, t, F.durable_durable_lsn, 8, "DURABLE.durable_lsn")
  list(c, t, F.durable_assigned, "Assigned", function(cc, tree, label)
    local start = cc.pos
    local sub = tree:add(F.assigned, cc.tvb(cc.pos, 0))
    sub:append_text(label)
    uint(cc, sub, F.assigned_lsn, 8, "DURABLE.assigned.lsn")
    fixed(cc, sub, F.assigned_record_id, 16, "DURABLE.assigned.record_id")
    uint(cc, sub, F.assigned_version, 8, "DURABLE.assigned.version")
    sub:set_len(cc.pos - start)
  end, "DURABLE.assigned")
  return "gen " .. hex64(generation) .. " through lsn " .. tostring(lsn)
end
PAYLOAD[0x14] = function(c, t)
  local lsn = uint(c, t, F.conflict_lsn, 8, "CONFLICT.lsn")
  fixed(c, t, F.conflict_record_id, 16, "CONFLICT.record_id")
  uint(c, t, F.conflict_server_version, 8, "CONFLICT.server_version")
  fixed(c, t, F.conflict_copy_id, 16, "CONFLICT.copy_id")
  return "lsn " .. tostring(lsn)
end
PAYLOAD[0x20] = function(c, t)
  local anchor = uint(c, t, F.pull_anchor, 8, "PULL.anchor")
  uint(c, t, F.pull_max_records, 4, "PULL.max_records")
  return "after anchor " .. tostring(anchor)
end
PAYLOAD[0x21] = function(c, t)
  local count = list(c, t, F.records_records, "Record", function(cc, tree, label) record(cc, tree, label) end,
    "RECORDS.records")
  return count .. " record(s)"
end
PAYLOAD[0x22] = function(c, t)
  local anchor = uint(c, t, F.pull_end_anchor, 8, "PULL_END.anchor")
  local more = boolean(c, t, F.pull_end_more, "PULL_END.more")
  return "anchor " .. tostring(anchor) .. (more and ", more" or "")
end
PAYLOAD[0x23] = function(c, t)
  return "anchor " .. tostring(uint(c, t, F.pull_ack_anchor, 8, "PULL_ACK.anchor"))
end
PAYLOAD[0x30] = function(c, t)
  fixed(c, t, F.blob_query_blob_id, 16, "BLOB_QUERY.blob_id")
end
PAYLOAD[0x31] = function(c, t)
  local start = c.pos
  fixed(c, t, F.blob_chunk_blob_id, 16, "BLOB_CHUNK.blob_id")
  local offset = uint(c, t, F.blob_chunk_offset, 8, "BLOB_CHUNK.offset")
  local total = uint(c, t, F.blob_chunk_total, 8, "BLOB_CHUNK.total")
  local n = uint(c, t, F.blob_chunk_data_length, 4, "BLOB_CHUNK.data")
  need(c, n, "BLOB_CHUNK.data")
  local item = t:add(F.blob_chunk_data, c.tvb(c.pos, n))
  c.pos = c.pos + n
  if offset + UInt64(n) > total then
    item:add_proto_expert_info(E.payload, "BAD_FIELD: bytes [" .. tostring(offset) .. ", +" .. n ..
      ") exceed total " .. tostring(total) .. " (R-MSG-2)")
    c.after = { code = "BAD_FIELD", text = "data extends past the blob's total", range = c.tvb(start, c.pos - start) }
  end
  return "[" .. tostring(offset) .. ", +" .. n .. ") of " .. tostring(total)
end
PAYLOAD[0x32] = function(c, t)
  fixed(c, t, F.blob_ack_blob_id, 16, "BLOB_ACK.blob_id")
  return "have " .. tostring(uint(c, t, F.blob_ack_have, 8, "BLOB_ACK.have"))
end
PAYLOAD[0x40] = function(c, t)
  return "nonce " .. tostring(uint(c, t, F.ping_nonce, 8, "PING.nonce"))
end
PAYLOAD[0x41] = function(c, t)
  return "nonce " .. tostring(uint(c, t, F.pong_nonce, 8, "PONG.nonce"))
end
PAYLOAD[0x7E] = function(c, t)
  local code, code_item = uint(c, t, F.error_code, 2, "ERROR.code")
  local fatal = boolean(c, t, F.error_fatal, "ERROR.fatal")
  local message = text(c, t, F.error_text, "ERROR.text")
  local name = ERRORS[code] or string.format("0x%04x", code)
  code_item:add_proto_expert_info(E.error_message, "ERROR " .. name .. (fatal and " (fatal)" or "") .. ": " .. message)
  return name .. (fatal and " (fatal)" or "")
end
PAYLOAD[0x7F] = function(c, t)
  local reason = text(c, t, F.bye_reason, "BYE.reason")
  return reason ~= "" and ('"' .. reason .. '"') or nil
end

-- ------------------------------------------------------------------------------------------ state

-- Per TCP stream and direction, computed on the first pass (pinfo.visited false) and kept per
-- packet for later passes: the next sequence number, the negotiated max_frame, and whether the
-- direction ends with a partial frame (TRUNCATED at its FIN or RST).
local streams = {}
local seq_checks = {}      -- "packet:stream:dir:seq" -> expected seq (when it differed)
local truncated_at = {}    -- packet number of a FIN or RST -> text

local function stream_state(pinfo)
  local stream = f_tcp_stream()
  local key = (stream and tostring(stream.value) or "?") .. ":" .. tostring(pinfo.src_port)
  local peer = (stream and tostring(stream.value) or "?") .. ":" .. tostring(pinfo.dst_port)
  streams[key] = streams[key] or {}
  streams[peer] = streams[peer] or {}
  return streams[key], streams[peer], key
end

local function reset_protocol_state()
  streams = {}
  seq_checks = {}
  truncated_at = {}
end

-- ------------------------------------------------------------------------------------------ frames

local function add_info(pinfo, text)
  local current = tostring(pinfo.cols.info)
  if pinfo.private["sidekick_info"] ~= tostring(pinfo.number) then
    pinfo.private["sidekick_info"] = tostring(pinfo.number)
    if pinfo.private["sidekick_http"] == "1" then
      pinfo.cols.info:append(" " .. text)
    else
      pinfo.cols.info:set(text)
    end
  else
    pinfo.cols.info:append(", " .. text)
  end
end

local function framing_error(tree, tvb, offset, code, text)
  local item = tree:add(sk, tvb(offset))
  item:append_text(": " .. code)
  item:add(F.undecoded, tvb(offset))
  item:add_proto_expert_info(E.framing, code .. ": " .. text .. " (" .. CHECK_REQUIREMENT[code] .. ")")
  return item
end

-- The header checks of section 3, in order, on the bytes present at offset; nil if they pass.
local function header_error(tvb, offset)
  local available = tvb:len() - offset
  if available >= 1 and tvb(offset, 1):uint() ~= 0x53 then return "BAD_MAGIC", "the frame does not begin with SK" end
  if available >= 2 and tvb(offset + 1, 1):uint() ~= 0x4B then return "BAD_MAGIC", "the frame does not begin with SK" end
  if available >= 3 and tvb(offset + 2, 1):uint() ~= 1 then
    return "BAD_VERSION", "version " .. tvb(offset + 2, 1):uint() .. " (this dissector knows version 1)"
  end
  if available >= 4 and MESSAGES[tvb(offset + 3, 1):uint()] == nil then
    return "UNKNOWN_TYPE", string.format("message type 0x%02x", tvb(offset + 3, 1):uint())
  end
  if available >= 6 and tvb(offset + 4, 2):uint() ~= 0 then
    return "BAD_FLAGS", string.format("flags 0x%04x", tvb(offset + 4, 2):uint())
  end
  if available >= HEADER_LEN then
    local size = OVERHEAD + tvb(offset + 10, 4):uint()
    if size > MAX_MAX_FRAME then
      return "FRAME_TOO_LARGE", "a frame of " .. size .. " bytes (no session allows more than " .. MAX_MAX_FRAME .. ")"
    end
  end
  return nil
end

-- One complete frame at offset (header checks passed); returns its size.
local function dissect_frame(tvb, pinfo, tree, offset, own, peer)
  local length = tvb(offset + 10, 4):uint()
  local size = OVERHEAD + length
  local mtype = tvb(offset + 3, 1):uint()
  local name = MESSAGES[mtype]
  local seq = tvb(offset + 6, 4):uint()
  local item = tree:add(sk, tvb(offset, size))
  item:append_text(", " .. name .. ", seq " .. seq)
  item:add(F.magic, tvb(offset, 2))
  item:add(F.version, tvb(offset + 2, 1))
  item:add(F.type, tvb(offset + 3, 1))
  item:add(F.flags, tvb(offset + 4, 2))
  local seq_item = item:add(F.seq, tvb(offset + 6, 4))
  local length_item = item:add(F.length, tvb(offset + 10, 4))
  local payload_item = item:add(F.payload, tvb(offset + HEADER_LEN, length))
  payload_item:set_text(name .. " (" .. length .. " bytes)")

  -- sequence numbers per direction (first pass), a HELLO starts a session
  local seq_key = pinfo.number .. ":" .. offset .. ":" .. seq .. ":" .. mtype
  if not pinfo.visited and own ~= nil then
    if mtype == 0x01 then
      own.next_seq, peer.next_seq = nil, 0
    end
    if own.next_seq ~= nil and own.next_seq ~= seq then seq_checks[seq_key] = own.next_seq end
    own.next_seq = seq + 1
    if own.max_frame ~= nil and size > own.max_frame then seq_checks[seq_key .. ":large"] = own.max_frame end
  end
  if seq_checks[seq_key] ~= nil then
    seq_item:add_proto_expert_info(E.sequence, "BAD_SEQUENCE: expected seq " .. seq_checks[seq_key] .. " (R-FRAME-8)")
  end
  if seq_checks[seq_key .. ":large"] ~= nil then
    length_item:add_proto_expert_info(E.large, "frame of " .. size .. " bytes above the negotiated max_frame " ..
      seq_checks[seq_key .. ":large"] .. " (R-FRAME-5, FRAME_TOO_LARGE)")
  end

  local crc_range = tvb(offset + HEADER_LEN + length, TRAILER_LEN)
  local crc_item = item:add(F.crc, crc_range)
  local expected = crc32(tvb(offset, HEADER_LEN + length):raw())
  local errors = {}
  if crc_range:uint() ~= expected then
    item:add(F.crc_status, crc_range, "Bad")
    crc_item:add_proto_expert_info(E.crc, string.format("BAD_CRC: CRC-32 is 0x%08x, header and payload give 0x%08x (R-FRAME-6)",
      crc_range:uint(), expected))
    errors[#errors + 1] = "BAD_CRC"
  else
    item:add(F.crc_status, crc_range, "Good")
  end

  local c = cursor(tvb, offset + HEADER_LEN, offset + HEADER_LEN + length)
  local ok, summary, extra = pcall(PAYLOAD[mtype], c, payload_item)
  if not ok then
    if getmetatable(summary) ~= DecodeError then error(summary, 0) end
    local problem = summary
    if problem.code == "MALFORMED_PAYLOAD" then
      payload_item:add_proto_expert_info(E.payload, "MALFORMED_PAYLOAD: " .. problem.text .. " (R-ENC-2)")
    end
    errors[#errors + 1] = problem.code
    summary = nil
  elseif c.pos < c.stop then
    local rest = tvb(c.pos, c.stop - c.pos)
    payload_item:add(F.undecoded, rest):add_proto_expert_info(E.payload, "TRAILING_BYTES: " .. (c.stop - c.pos) ..
      " bytes after the payload (R-ENC-2)")
    errors[#errors + 1] = "TRAILING_BYTES"
  elseif c.after ~= nil then
    errors[#errors + 1] = c.after.code
  end
  if seq_checks[seq_key] ~= nil then errors[#errors + 1] = "BAD_SEQUENCE" end
  if mtype == 0x02 and ok and extra ~= nil and not pinfo.visited and peer ~= nil then
    own.max_frame = extra
    peer.max_frame = extra
  end
  local info = name .. " seq=" .. seq .. (summary and (" " .. summary) or "")
  if #errors > 0 then info = info .. " [" .. table.concat(errors, ", ") .. "]" end
  add_info(pinfo, info)
  return size
end

-- Frames from offset to the end of tvb; returns the offset reached and whether a partial frame
-- is left (needing n more bytes, or nil when the header itself is incomplete).
local function dissect_frames(tvb, pinfo, tree, offset, own, peer)
  local total = tvb:len()
  while offset < total do
    local code, text = header_error(tvb, offset)
    if code ~= nil then
      framing_error(tree, tvb, offset, code, text)
      add_info(pinfo, "[" .. code .. "]")
      return total, false
    end
    if total - offset < HEADER_LEN then
      return offset, true, nil
    end
    local size = OVERHEAD + tvb(offset + 10, 4):uint()
    if total - offset < size then
      return offset, true, size - (total - offset)
    end
    offset = offset + dissect_frame(tvb, pinfo, tree, offset, own, peer)
  end
  return offset, false
end

-- ------------------------------------------------------------------------------------------ raw binding

function sk.dissector(tvb, pinfo, tree)
  pinfo.cols.protocol = "Sidekick"
  local own, peer = stream_state(pinfo)
  local offset, partial, more = dissect_frames(tvb, pinfo, tree, 0, own, peer)
  if not pinfo.visited then own.partial = partial end
  if partial then
    pinfo.desegment_offset = offset
    pinfo.desegment_len = more or DESEGMENT_ONE_MORE_SEGMENT
  end
  return tvb:len()
end

local function heuristic(tvb, pinfo, tree)
  if tvb:len() < 6 then return false end
  if tvb(0, 2):string() ~= "SK" or tvb(2, 1):uint() ~= 1 or MESSAGES[tvb(3, 1):uint()] == nil
      or tvb(4, 2):uint() ~= 0 then
    return false
  end
  pinfo.conversation = sk
  sk.dissector(tvb, pinfo, tree)
  return true
end

-- A FIN or RST that ends a direction inside a frame: TRUNCATED (R-FRAME-10).
function sk_end.dissector(tvb, pinfo, tree)
  local fin, rst = f_tcp_fin(), f_tcp_rst()
  if not ((fin and fin.value) or (rst and rst.value)) then return end
  local stream = f_tcp_stream()
  if stream == nil then return end
  if not pinfo.visited then
    local own = streams[tostring(stream.value) .. ":" .. tostring(pinfo.src_port)]
    local peer = streams[tostring(stream.value) .. ":" .. tostring(pinfo.dst_port)]
    if own ~= nil and own.partial then
      truncated_at[pinfo.number] = "the stream ends inside a frame"
      own.partial = false
    end
    if rst and rst.value and peer ~= nil and peer.partial then
      truncated_at[pinfo.number] = "the connection is reset inside a frame of the other direction"
      peer.partial = false
    end
  end
  local why = truncated_at[pinfo.number]
  if why ~= nil then
    local item = tree:add(sk, tvb(0, 0))
    item:append_text(": TRUNCATED")
    item:add_proto_expert_info(E.truncated, "TRUNCATED: " .. why .. " (R-FRAME-10)")
    pinfo.cols.info:append(" [Sidekick: TRUNCATED]")
  end
end
register_postdissector(sk_end)

-- ------------------------------------------------------------------------------------------ HTTP binding

local sk_http = Proto("sidekick_http", "Sidekick frames in an HTTP body")
function sk_http.dissector(tvb, pinfo, tree)
  pinfo.private["sidekick_http"] = "1"
  local offset, partial = dissect_frames(tvb, pinfo, tree, 0, nil, nil)
  if partial then
    local item = tree:add(sk, tvb(offset))
    item:append_text(": TRUNCATED")
    item:add(F.undecoded, tvb(offset))
    item:add_proto_expert_info(E.truncated, "TRUNCATED: the HTTP body ends inside a frame (R-FRAME-10, R-HTTP-12)")
    add_info(pinfo, "[TRUNCATED]")
  end
  return tvb:len()
end

DissectorTable.get("tcp.port"):add(RAW_PORT, sk)
sk:register_heuristic("tcp", heuristic)
DissectorTable.get("media_type"):add("application/x-sidekick-frames", sk_http)
local ok, http = pcall(Dissector.get, "http-over-tcp")
if ok and http ~= nil then DissectorTable.get("tcp.port"):add(HTTP_PORT, http) end

function sk.init()
  reset_protocol_state()
end
