-- A route script for config/examples/lua-scripts.yaml (README "Transforms",
-- "Lua scripts").
--
-- One line from a power meter, "m7;230.1;229.8;231.0" (its id and the
-- voltage of each phase), becomes one JSON message per phase on
-- plant/meters/<id>/L1..L3: {"volts":230.1,"ts":<published, Unix ms>}.
-- A line that is not an id and three numbers is an error: the reading goes
-- to the dead-letter queue with this file's line as the reason.
function transform(msg)
  local fields = {}
  for f in msg.payload:gmatch('[^;\r\n]+') do
    fields[#fields + 1] = f
  end
  local id = fields[1]
  if #fields ~= 4 or not id:match('^[%w_-]+$') then
    error('expected METER;L1;L2;L3, got "' .. msg.payload .. '"')
  end
  local out = {}
  for phase = 1, 3 do
    local volts = tonumber(fields[phase + 1])
    if volts == nil then
      error('phase L' .. phase .. ' is not a number: ' .. fields[phase + 1])
    end
    out[phase] = {
      topic = 'plant/meters/' .. id .. '/L' .. phase,
      payload = string.format('{"volts":%.1f,"ts":%d}', volts, msg.ts),
    }
  end
  return out
end
