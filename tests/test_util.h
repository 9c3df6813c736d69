// Helpers shared by the test suites: seeded random data (never zeros),
// tolerance checks in llm.c's style (|got - ref| <= atol + rtol * |ref|) and
// scratch folders.
#pragma once

#include <gtest/gtest.h>
#include <cstdint>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace gati::test {

inline std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Fails with the first index out of tolerance and how far it is.
inline ::testing::AssertionResult all_close(const float* got, const float* ref, size_t n, double atol, double rtol) {
  for (size_t i = 0; i < n; ++i) {
    const double err = std::abs(double(got[i]) - double(ref[i]));
    if (!(err <= atol + rtol * std::abs(double(ref[i]))))
      return ::testing::AssertionFailure()
             << "index " << i << ": got " << got[i] << ", expected " << ref[i] << " (error " << err << ", allowed "
             << atol + rtol * std::abs(double(ref[i])) << ")";
  }
  return ::testing::AssertionSuccess();
}

inline std::filesystem::path scratch_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("gati_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

inline void write_bytes(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

inline std::vector<uint8_t> read_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// An environment variable set for a scope; what was there before (or its
// absence) comes back when the scope ends, an early ASSERT's return included.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* v = std::getenv(name)) saved_ = v;
    set(value);
  }
  ~ScopedEnv() {
    if (saved_)
      setenv(name_, saved_->c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  void set(const std::string& value) { setenv(name_, value.c_str(), 1); }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

}  // namespace gati::test

// Expects statement to throw gati::Error whose message contains `needle`.
#define EXPECT_GATI_ERROR(statement, needle)                                                   \
  do {                                                                                         \
    try {                                                                                      \
      statement;                                                                               \
      ADD_FAILURE() << "expected gati::Error containing '" << (needle) << "', nothing thrown"; \
    } catch (const ::gati::Error& gati_e_) {                                                   \
      EXPECT_NE(std::string(gati_e_.what()).find(needle), std::string::npos)                   \
          << "message '" << gati_e_.what() << "' lacks '" << (needle) << "'";                  \
    }                                                                                          \
  } while (0)
