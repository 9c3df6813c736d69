// Strict JSON field reads; see json_read.h.
#include "weights/common/json_read.h"

#include <set>
#include <vector>

#include <cmath>
#include <utility>

#include "weights/common/error.h"

namespace gati {

namespace {

// The value as it appeared, shortened: an error quotes it, not a megabyte of it.
std::string shown(const nlohmann::json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

}  // namespace

int64_t json_integer(const nlohmann::json& v, const std::string& where, int64_t lo, int64_t hi) {
  auto refuse = [&] { fail(where, " must be an integer in [", lo, ", ", hi, "], got ", shown(v)); };
  if (!v.is_number_integer()) refuse();
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (hi < 0 || u > uint64_t(hi) || (lo > 0 && u < uint64_t(lo))) refuse();
    return int64_t(u);
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) refuse();
  return x;
}

double json_number(const nlohmann::json& v, const std::string& where, double lo, double hi) {
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < lo || v.get<double>() > hi)
    fail(where, " must be a number in [", lo, ", ", hi, "], got ", shown(v));
  return v.get<double>();
}

std::string json_string(const nlohmann::json& v, const std::string& where) {
  if (!v.is_string()) fail(where, " must be a string, got ", shown(v));
  return v.get<std::string>();
}

nlohmann::json json_parse(std::string_view text, const std::string& what) {
  // Keys seen in each object being parsed, innermost last.
  std::vector<std::set<std::string>> open;
  const nlohmann::json::parser_callback_t check = [&](int depth, nlohmann::json::parse_event_t event,
                                                      nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    // No gati file nests deeper than a few levels; a deeper one would only
    // cost stack (printing it in an error recurses).
    if (depth > kMaxJsonDepth) fail(what, ": nested more than ", kMaxJsonDepth, " levels deep");
    if (event == E::object_start) {
      open.emplace_back();
    } else if (event == E::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (event == E::key && !open.empty()) {
      const std::string key = parsed.get<std::string>();
      if (!open.back().insert(key).second) fail(what, ": key '", key, "' appears twice in one object");
    }
    return true;
  };
  const size_t nul = text.find('\0');
  if (nul != std::string_view::npos) fail(what, " is not valid JSON (a NUL byte at offset ", nul, ")");
  try {
    return nlohmann::json::parse(text.begin(), text.end(), check);
  } catch (const nlohmann::json::exception& e) {
    fail(what, " is not valid JSON (", e.what(), ")");
  }
}

void json_only_keys(const nlohmann::json& j, const std::string& where, std::initializer_list<const char*> valid) {
  if (!j.is_object()) fail(where, " must be a JSON object, got ", shown(j));
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* v : valid) known = known || it.key() == v;
    if (known) continue;
    std::string list;
    for (const char* v : valid) list += (list.empty() ? "" : ", ") + std::string(v);
    fail(where, ": unknown key '", it.key(), "' (valid: ", list, ")");
  }
}

JsonFields::JsonFields(const nlohmann::json& j, std::string where) : j_(j), where_(std::move(where)) {
  if (!j_.is_object()) fail(where_, " must be a JSON object, got ", shown(j_));
}

std::string JsonFields::where_of(const std::string& key) const { return str_cat(where_, ": '", key, "'"); }

const nlohmann::json& JsonFields::at(const std::string& key) const {
  const auto it = j_.find(key);
  if (it == j_.end()) fail(where_, ": missing key '", key, "'");
  return *it;
}

int64_t JsonFields::integer(const std::string& key, int64_t lo, int64_t hi) const {
  return json_integer(at(key), where_of(key), lo, hi);
}

double JsonFields::number(const std::string& key, double lo, double hi) const {
  return json_number(at(key), where_of(key), lo, hi);
}

std::string JsonFields::string(const std::string& key) const { return json_string(at(key), where_of(key)); }

bool JsonFields::boolean(const std::string& key) const {
  const nlohmann::json& v = at(key);
  if (!v.is_boolean()) fail(where_of(key), " must be true or false, got ", shown(v));
  return v.get<bool>();
}

const nlohmann::json& JsonFields::array(const std::string& key, bool allow_empty) const {
  const nlohmann::json& v = at(key);
  if (!v.is_array() || (!allow_empty && v.empty()))
    fail(where_of(key), " must be a", allow_empty ? "n" : " non-empty", " array, got ", shown(v));
  return v;
}

JsonFields JsonFields::object(const std::string& key) const { return JsonFields(at(key), where_of(key)); }

}  // namespace gati
