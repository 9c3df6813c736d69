// Typed reads of JSON fields, every error naming where and which key.
//
// Design decision: one strict reader for every JSON that gati reads (model
// architectures, cache metadata, traces).  nlohmann's get<int>() truncates
// 3.7 to 3, reads true as 1 and wraps 2^32 + 5 to 5, and its type errors
// name neither the file nor the key; here an integer is an integer in range,
// a number is finite and in range, and each error reads
// "<where>: 'key' must be an integer in [1, 4096], got 3.7".
//
//   const JsonFields exit(j, path + ": exit 'layer1.0'");
//   const int dim = int(exit.integer("dim", 1, 1 << 20));
#pragma once

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace gati {

// Parses `text`, strictly: invalid JSON, and a key given twice in one object
// (where nlohmann would keep the last silently), fail naming `what`
// ("t.json: trace is not valid JSON (...)", "...: key 'a' appears twice").
nlohmann::json json_parse(std::string_view text, const std::string& what);
// json_parse refuses deeper nesting (and text with a NUL byte).
constexpr int kMaxJsonDepth = 32;

// A single value (an array's entry): `where` names it in the error.
int64_t json_integer(const nlohmann::json& v, const std::string& where, int64_t lo, int64_t hi);
double json_number(const nlohmann::json& v, const std::string& where, double lo, double hi);
std::string json_string(const nlohmann::json& v, const std::string& where);
// Refuses a key of the object `j` that is not in `valid`, listing the valid
// ones: "<where>: unknown key 'x' (valid: a, b)".
void json_only_keys(const nlohmann::json& j, const std::string& where, std::initializer_list<const char*> valid);

class JsonFields {
 public:
  // Fails unless `j` is an object.
  JsonFields(const nlohmann::json& j, std::string where);

  bool has(const std::string& key) const { return j_.contains(key); }
  // The value, or an error naming the missing key.
  const nlohmann::json& at(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t lo, int64_t hi) const;
  double number(const std::string& key, double lo, double hi) const;
  std::string string(const std::string& key) const;
  bool boolean(const std::string& key) const;
  // An array (non-empty unless allow_empty), for the caller to walk with
  // json_integer and friends and where_of(key) + "[i]".
  const nlohmann::json& array(const std::string& key, bool allow_empty = false) const;
  JsonFields object(const std::string& key) const;
  // "<where>: 'key'", for messages about a field's value.
  std::string where_of(const std::string& key) const;
  const std::string& where() const { return where_; }

 private:
  const nlohmann::json& j_;
  std::string where_;
};

}  // namespace gati
