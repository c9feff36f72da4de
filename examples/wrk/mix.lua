-- The vehicles demo's request mix, for wrk (https://github.com/wg/wrk) against `vehicles serve`:
--
--   wrk -t2 -c32 -d10s --latency -s examples/wrk/mix.lua http://127.0.0.1:8080
--
-- The same mix as `vehicles demo` (examples/src/bin/vehicles/workload.rs), in percent:
-- vehicle 47, unknown vehicle 3, dealer page 12, homepage 10, search 15, user 8,
-- price change 2, profile change 3. Ids are skewed to hot keys like real traffic: the lowest
-- 1% of ids get about a fifth of the picks, the lowest 10% almost half. Searches are drawn
-- from 400 popular ones (make, price ceiling, body, province, year, sort, page), hot first.
-- Each thread has its own fixed seed, so a run repeats the same requests.
--
-- It expects the seeded database: 3,000 vehicles, 50 dealers, 500 users.
--
-- Expected answers besides 200: 404 for the unknown vehicles (ids 3001-3100), and 429 for
-- price changes past 5 per minute: the route is rate limited per client address, and every
-- wrk connection comes from 127.0.0.1. At the end it prints the requests sent by kind and
-- the answers by status (wrk itself counts every non-2xx as "Non-2xx or 3xx responses").

local VEHICLES, DEALERS, USERS, UNKNOWN = 3000, 50, 500, 100

local MAKES = { "toyota", "honda", "hyundai", "kia", "nissan", "ford", "mitsubishi", "jeep" }
local BODIES = { "sedan", "suv", "pickup", "hatchback", "coupe" }
local PROVINCES = {
  "Santo%20Domingo", "Santiago", "La%20Vega", "Puerto%20Plata", "San%20Cristobal",
  "La%20Romana", "La%20Altagracia", "Duarte",
}
local SORTS = { "newest", "price_asc", "price_desc", "mileage" }

-- The mix, in percent, in the order `request` rolls it.
local MIX = {
  { "vehicle", 47 }, { "unknown vehicle", 3 }, { "dealer page", 12 }, { "homepage", 10 },
  { "search", 15 }, { "user", 8 }, { "price change", 2 }, { "profile change", 3 },
}

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

-- An id in 1..n, skewed to the low ids.
local function hot(n)
  return 1 + math.floor(math.random() ^ 3 * n)
end

local function pick(list)
  return list[math.random(#list)]
end

local searches = {}
sent = {}
statuses = {}

function init(args)
  math.randomseed(0xC0FFEE + (thread_number or 0))
  for _ = 1, 400 do
    local q = {}
    if math.random() < 0.8 then table.insert(q, "make=" .. pick(MAKES)) end
    if math.random() < 0.3 then table.insert(q, "body=" .. pick(BODIES)) end
    if math.random() < 0.2 then table.insert(q, "province=" .. pick(PROVINCES)) end
    if math.random() < 0.6 then table.insert(q, "max_price=" .. (10000 + 5000 * math.random(0, 6))) end
    if math.random() < 0.2 then table.insert(q, "year_from=" .. (2015 + math.random(0, 7))) end
    table.insert(q, "sort=" .. pick(SORTS))
    table.insert(q, "page=" .. (math.random() < 0.85 and 1 or 2))
    table.insert(searches, "/search?" .. table.concat(q, "&"))
  end
end

local function json_put(path, body)
  return wrk.format("PUT", path, { ["Content-Type"] = "application/json" }, body)
end

function request()
  local roll = math.random(100)
  local kind
  for _, entry in ipairs(MIX) do
    if roll <= entry[2] then kind = entry[1] break end
    roll = roll - entry[2]
  end
  sent[kind] = (sent[kind] or 0) + 1
  if kind == "vehicle" then
    return wrk.format("GET", "/vehicles/" .. hot(VEHICLES))
  elseif kind == "unknown vehicle" then
    return wrk.format("GET", "/vehicles/" .. (VEHICLES + hot(UNKNOWN)))
  elseif kind == "dealer page" then
    return wrk.format("GET", "/dealers/" .. hot(DEALERS) .. "/vehicles")
  elseif kind == "homepage" then
    return wrk.format("GET", "/homepage")
  elseif kind == "search" then
    return wrk.format("GET", searches[hot(#searches)])
  elseif kind == "user" then
    return wrk.format("GET", "/users/" .. hot(USERS))
  elseif kind == "price change" then
    local price = 5000 + math.random(0, 399) * 100
    return json_put("/vehicles/" .. hot(VEHICLES), '{"price": ' .. price .. "}")
  else
    local id = hot(USERS)
    return json_put("/users/" .. id,
      '{"name": "User ' .. id .. '", "province": "' .. pick(PROVINCES):gsub("%%20", " ") .. '"}')
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local function merged(name)
  local total = {}
  for _, thread in ipairs(threads) do
    for key, n in pairs(thread:get(name)) do
      total[key] = (total[key] or 0) + n
    end
  end
  local keys = {}
  for key in pairs(total) do table.insert(keys, key) end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, key in ipairs(keys) do table.insert(parts, key .. " " .. total[key]) end
  return table.concat(parts, ", ")
end

function done(summary, latency, requests)
  io.write("sent:     ", merged("sent"), "\n")
  io.write("statuses: ", merged("statuses"), "\n")
  io.write(string.format(
    "MIX requests_per_s=%.0f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout))
end
